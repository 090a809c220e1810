"""A seeded mutator for file contents, and the bookkeeping of a fuzz run.

Byte-level mutations (bit flips, byte changes, insertions, deletions, truncation, repeated or swapped
chunks, digits changed in the text parts) hit every layer of a file: magic, lengths, JSON headers,
payloads. ``mutate_json_value`` changes one value inside a JSON document (a number by one, a string, a
type, a removed key), which byte noise rarely does without breaking the syntax.
"""

from __future__ import annotations

import json
import random
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from bitmos.errors import BitmosUserError

_DIGITS = b"0123456789"


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """``data`` changed by one to three random edits (never returned unchanged for non-empty data)."""
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        n = len(out)
        kind = rng.randrange(9)
        if n == 0:
            out += bytes([rng.randrange(256)])
            continue
        i = rng.randrange(n)
        if kind == 0:                                   # flip one bit
            out[i] ^= 1 << rng.randrange(8)
        elif kind == 1:                                 # replace one byte
            out[i] = (out[i] + rng.randrange(1, 256)) % 256
        elif kind == 2:                                 # insert bytes
            out[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5)))
        elif kind == 3:                                 # delete a run
            del out[i:i + rng.randrange(1, 9)]
        elif kind == 4:                                 # truncate
            del out[rng.randrange(n):]
        elif kind == 5:                                 # repeat a chunk
            j = rng.randrange(i, min(n, i + 64) + 1)
            out[j:j] = out[i:j]
        elif kind == 6:                                 # change a digit (lengths, shifts, sizes in headers)
            digits = [k for k, b in enumerate(out) if b in _DIGITS]
            if digits:
                k = rng.choice(digits)
                out[k] = rng.choice([d for d in _DIGITS if d != out[k]])
            else:
                out[i] ^= 0x01
        elif kind == 7:                                 # swap two chunks
            j = rng.randrange(n)
            a, b = sorted((i, j))
            w = rng.randrange(1, 17)
            if b - a >= w:
                out[a:a + w], out[b:b + w] = out[b:b + w], out[a:a + w]
            else:
                out[i] ^= 0x80
        else:                                           # set a byte to an interesting value
            out[i] = rng.choice((0x00, 0xFF, 0x7F, 0x80, ord('"'), ord("{"), ord("-"), ord("\n")))
    if bytes(out) == data:                              # an edit that cancelled out: force a change
        if out:
            out[rng.randrange(len(out))] ^= 0x01
        else:
            out += b"\x00"
    return bytes(out)


def mutate_json_value(obj: Any, rng: random.Random) -> Any:
    """A deep copy of ``obj`` with one value changed, a key removed, or a value of another type."""
    obj = json.loads(json.dumps(obj))
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k in node:
                paths.append((node, k))
                walk(node[k])
        elif isinstance(node, list):
            for k in range(len(node)):
                paths.append((node, k))
                walk(node[k])

    walk(obj)
    if not paths:
        return {"x": obj}
    parent, key = rng.choice(paths)
    v = parent[key]
    choice = rng.randrange(6)
    if choice == 0 and isinstance(parent, dict):
        del parent[key]
    elif choice == 1 and isinstance(v, bool):
        parent[key] = not v
    elif choice == 1 and isinstance(v, int):
        parent[key] = v + rng.choice((-1, 1, -v - 1, 1 << 40))
    elif choice == 1 and isinstance(v, float):
        parent[key] = rng.choice((v * 2, -v, float("nan"), float("inf"), 0.0))
    elif choice == 2 and isinstance(v, str):
        parent[key] = rng.choice(("", "../../x", "/abs/path", v + "x", v[:-1], "a" * 300, "..", "con\x00"))
    else:
        parent[key] = rng.choice((None, -1, 0, 1 << 62, 1.5, "s", [], {}, [1, 2], {"a": 1}, True))
    return obj


@dataclass
class FuzzCounts:
    """What happened to every mutated input of one format."""
    fmt: str
    cases: int = 0
    unchanged_loads: int = 0     # loaded to exactly the original (e.g. whitespace in JSON)
    project_errors: int = 0      # a BitmosUserError (the one-line error the CLI prints)
    accepted: int = 0            # a valid, different object from a human-edited text format (allowed there)
    crashes: list[str] = field(default_factory=list)        # any other exception: a bug
    silent_loads: list[str] = field(default_factory=list)   # a checksummed format loaded to something else

    def line(self) -> str:
        return (f"{self.fmt:28s} cases {self.cases:6d}  project errors {self.project_errors:6d}  "
                f"same as original {self.unchanged_loads:5d}  valid edits {self.accepted:5d}  "
                f"crashes {len(self.crashes)}  silent loads {len(self.silent_loads)}")


def fuzz(fmt: str, original: bytes, load: Callable[[bytes], Any], *, cases: int, seed: int,
         checksummed: bool, mutator: Callable[[bytes, random.Random], bytes] = mutate_bytes) -> FuzzCounts:
    """Feed ``cases`` mutations of ``original`` to ``load`` (bytes -> a comparable value).

    ``checksummed`` formats must raise a BitmosUserError or load to exactly ``load(original)``; the others
    (text a person edits: configs, sweep specs, listings) may also load to a different valid value. Any
    exception that is not a BitmosUserError is a crash.
    """
    counts = FuzzCounts(fmt)
    want = load(original)
    rng = random.Random(seed)
    for _ in range(cases):
        data = mutator(original, rng)
        counts.cases += 1
        try:
            got = load(data)
        except BitmosUserError:
            counts.project_errors += 1
            continue
        except Exception:  # noqa: BLE001 - every other exception is what this suite looks for
            counts.crashes.append(f"{data[:80]!r}...: {traceback.format_exc(limit=3)}")
            continue
        if _same(got, want):
            counts.unchanged_loads += 1
        elif checksummed:
            counts.silent_loads.append(f"{data[:120]!r}")
        else:
            counts.accepted += 1
    return counts


def _same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN (a value compared with itself)."""
    return json.dumps(a, sort_keys=True, default=repr) == json.dumps(b, sort_keys=True, default=repr)
