"""Pareto fronts over rows of named metrics, each maximized or minimized."""

from __future__ import annotations

from typing import Any, Sequence


def parse_objectives(objectives: Sequence[str]) -> list[tuple[str, int]]:
    """``["max:decode_tokens_per_s", "min:luts"]`` -> [(name, +1), (name, -1)] (+1 = maximize)."""
    out = []
    for o in objectives:
        sense, _, name = o.partition(":")
        if sense not in ("max", "min") or not name:
            raise ValueError(f"objective {o!r} must be 'max:NAME' or 'min:NAME'")
        out.append((name, 1 if sense == "max" else -1))
    return out


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a dominates b (all values oriented so larger is better): >= everywhere and > somewhere."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_front(rows: Sequence[dict[str, Any]], objectives: Sequence[str]) -> list[int]:
    """Indices of the rows no other row dominates; rows missing an objective are left out."""
    obj = parse_objectives(objectives)
    vecs: list[tuple[int, tuple[float, ...]]] = []
    for i, r in enumerate(rows):
        try:
            v = tuple(s * float(r[name]) for name, s in obj)
        except (KeyError, TypeError, ValueError):
            continue
        if any(x != x for x in v):  # NaN
            continue
        vecs.append((i, v))
    front = []
    for i, v in vecs:
        if not any(dominates(w, v) for j, w in vecs if j != i):
            front.append(i)
    return front
