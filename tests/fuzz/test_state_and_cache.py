"""Fuzz the trainer state (``<out>.trainer.pt``), the checkpoint's tokenizer name and the synthesis cache
(``--cache-dir``), issue 22.

* trainer state: mutated bytes end in a FormatError or restore exactly the original; forged payloads (a valid
  checksum over wrong types, wrong shapes, hostile values) end in a FormatError or a state that fits the
  optimizer; resuming goes through the same check;
* a checkpoint whose config names a BPE tokenizer ``bpe:../../x`` is refused before it becomes a path;
* synthesis cache: mutated, truncated, forged, wrong-type entries and entries that are folders, FIFOs or
  symlinks are a cache miss (the design is synthesized again) or exactly the original result, never an
  exception; a cache write that fails keeps the result.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import random

import pytest

from bitmos.errors import BitmosUserError, FormatError

from .mutate import fuzz, mutate_bytes, mutate_json_value

CASES = 300


# ---- trainer state -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    from bitmos.model.checkpoint import save_trainer_state
    from bitmos.model.transformer import Transformer
    from tests.model.model_helpers import tiny_config

    torch.manual_seed(0)
    m = Transformer(tiny_config(n_layers=1, dim=16, hidden_dim=32, vocab_size=32))
    opt = m.configure_optimizer(1e-3)
    for _ in range(2):
        opt.zero_grad()
        m(torch.randint(0, 32, (1, 4)), torch.randint(0, 32, (1, 4)))[1].backward()
        opt.step()
    p = tmp_path_factory.mktemp("st") / "m.trainer.pt"
    save_trainer_state(p, opt, 3, torch.get_rng_state())
    return m, p


def _restore(model, path, step=3):
    import torch

    from bitmos.model.checkpoint import restore_trainer_state
    opt = model.configure_optimizer(1e-3)
    got = restore_trainer_state(path, opt, step)
    sd = opt.state_dict()
    blob = io.BytesIO()
    torch.save(sd, blob)
    return [got, hashlib.sha256(json.dumps(sd["param_groups"], sort_keys=True, default=repr).encode()).hexdigest(),
            sorted((str(k), n, hashlib.sha256(v.numpy().tobytes()).hexdigest() if hasattr(v, "numpy") else v)
                   for k, s in sd["state"].items() for n, v in s.items())]


def test_trainer_state_mutated_bytes(trained, tmp_path):
    model, p = trained
    target = tmp_path / "t.trainer.pt"

    def load(data: bytes):
        target.write_bytes(data)
        return _restore(model, target)
    counts = fuzz("trainer state", p.read_bytes(), load, cases=CASES, seed=1, checksummed=True)
    print(counts.line())
    assert not counts.crashes, counts.crashes[0]
    assert not counts.silent_loads, counts.silent_loads[0]
    assert counts.project_errors > CASES // 2


def _hostile_values():
    import torch
    return [None, -1, 3.5, True, "3", [], {}, [1, 2], {"a": 1}, torch.zeros(3), torch.zeros(2, 2, dtype=torch.int64),
            torch.zeros(0, dtype=torch.uint8), torch.zeros(7, 7), "../../x", 1 << 62, float("nan")]


def _forge(state: dict, rng: random.Random):
    """Replace one value anywhere in the (nested) trainer state by a hostile one."""
    st = copy.deepcopy(state)
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append(path + [k])
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                paths.append(path + [i])
                walk(v, path + [i])
    walk(st, [])
    path = rng.choice(paths)
    parent = st
    for k in path[:-1]:
        parent = parent[k]
    if rng.random() < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(_hostile_values())
    return st


def test_trainer_state_forged_payloads(trained, tmp_path):
    """A valid checksum over hostile content: a FormatError or a state that fits, never another exception."""
    import torch

    from bitmos.model.checkpoint import TRAINER_MAGIC, restore_trainer_state
    model, p = trained
    data = p.read_bytes()
    original = torch.load(io.BytesIO(data[len(TRAINER_MAGIC) + 32:]), weights_only=True)
    target = tmp_path / "f.trainer.pt"
    rng = random.Random(2)
    errors = 0
    for _ in range(CASES):
        buf = io.BytesIO()
        torch.save(_forge(original, rng), buf)
        payload = buf.getvalue()
        for framed in (TRAINER_MAGIC + hashlib.sha256(payload).digest() + payload, payload):   # new and old files
            target.write_bytes(framed)
            opt = model.configure_optimizer(1e-3)
            try:
                restore_trainer_state(target, opt, 3)
            except FormatError as exc:
                assert "\n" not in str(exc)
                errors += 1
                continue
            for q in model.parameters():   # a state that was accepted must train on
                q.grad = torch.ones_like(q)
            opt.step()
    assert errors > CASES   # most forgeries are refused


def test_trainer_state_of_another_step_or_model_is_refused(trained, tmp_path):
    from bitmos.model.checkpoint import restore_trainer_state
    from bitmos.model.transformer import Transformer
    from tests.model.model_helpers import tiny_config
    model, p = trained
    with pytest.raises(FormatError, match="of step 3, the checkpoint of step 7"):
        _restore(model, p, step=7)
    other = Transformer(tiny_config(n_layers=1, dim=32, hidden_dim=32, vocab_size=32))
    with pytest.raises(FormatError, match="has shape"):
        restore_trainer_state(p, other.configure_optimizer(1e-3), 3)
    for bad, match in ((b"", "corrupt or unsafe"), (b"\x00" * 10, "corrupt or unsafe")):
        (tmp_path / "b.pt").write_bytes(bad)
        with pytest.raises(FormatError, match=match):
            _restore(model, tmp_path / "b.pt")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(FormatError, match="is a folder"):
        _restore(model, tmp_path / "dir.pt")


def test_train_resume_with_a_bad_trainer_state_is_one_line(tmp_path, capsys):
    from bitmos.app.cli import main
    out = tmp_path / "m.safetensors"
    argv = ["train", "--out", str(out), "--steps", "2", "--seq-len", "8", "--batch-size", "2",
            "--dim", "16", "--n-layers", "1", "--n-heads", "2", "--hidden-dim", "32", "--eval-interval", "0"]
    rc = main(argv)
    cap = capsys.readouterr()
    if rc != 0:
        pytest.skip(f"train options differ here: {cap.err.strip()[:200]}")
    state = tmp_path / "m.trainer.pt"
    good = state.read_bytes()
    for bad in (good[: len(good) // 2], good[:-1] + bytes([good[-1] ^ 1]), b"junk"):
        state.write_bytes(bad)
        assert main(argv[:4] + ["4"] + argv[5:] + ["--resume"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1 and "trainer state" in err, err


# ---- a checkpoint's tokenizer name is not a path -----------------------------------------------------------

@pytest.mark.parametrize("name", ["bpe:../../outside/evil", "bpe:/abs/evil", "bpe:a/../../evil", "bpe:.."])
def test_a_tokenizer_name_from_a_file_never_becomes_a_path(tmp_path, name):
    from bitmos.model.data import get_tokenizer
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "evil.json").write_text("{}")
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(BitmosUserError, match="not a safe file name"):
        get_tokenizer(name, tmp_path / "a" / "b")


# ---- synthesis cache ---------------------------------------------------------------------------------------

def _result():
    from bitmos.explore.synth import SynthResult
    return SynthResult(target="ecp5", device="85k", part="LFE5U-85F", package="CABGA381", top="bitmos_pe",
                       luts=1234, ffs=567, brams=2, dsps=1, fmax_mhz=151.2, lut_available=83640,
                       utilization={"TRELLIS_COMB": {"used": 1300, "available": 83640}},
                       binary_ops_per_cycle=512, config={"rows": 4}, config_name="small", component="pe",
                       tools={"yosys": "0.40"}, verilog_sha256="ab" * 32, key="0123456789abcdef01234567",
                       seconds=12.5, commands=["yosys -p x"])


def _cache_value(r):
    return None if r is None else r.to_dict()


@pytest.mark.parametrize("mutator", ["bytes", "json"])
def test_synth_cache_entries_mutated(tmp_path, mutator):
    from bitmos.explore.synth import read_cache_entry, write_cache_entry
    entry = tmp_path / "0123456789abcdef01234567.json"
    assert write_cache_entry(entry, _result()) is None
    original = entry.read_bytes()
    want = read_cache_entry(entry, "0123456789abcdef01234567")
    assert want is not None and want.to_dict() == _result().to_dict()
    outcome = {"miss": 0, "same": 0}

    def load(data):
        entry.write_bytes(data)
        got = read_cache_entry(entry, "0123456789abcdef01234567")
        outcome["miss" if got is None else "same"] += 1
        if got is None:
            raise FormatError("miss")   # a miss is the cache's project outcome
        got.summary()                   # what the CLI prints from a cached result
        return got.to_dict()

    def json_mutator(data, rng):
        return json.dumps(mutate_json_value(json.loads(data), rng)).encode()
    counts = fuzz("synth cache", original, load, cases=CASES, seed=3, checksummed=True,
                  mutator=mutate_bytes if mutator == "bytes" else json_mutator)
    print(counts.line(), outcome)
    assert not counts.crashes, counts.crashes[0]
    assert not counts.silent_loads, counts.silent_loads[0]
    assert outcome["miss"] > CASES // 2


def test_synth_cache_forged_and_legacy_entries_are_checked(tmp_path):
    """An entry with its checksum recomputed (or an older entry without one) is still type-checked."""
    from bitmos.explore.synth import _entry_digest, read_cache_entry, write_cache_entry
    entry = tmp_path / "k.json"
    key = "0123456789abcdef01234567"
    write_cache_entry(entry, _result())
    base = json.loads(entry.read_text())
    rng = random.Random(4)
    for i in range(CASES):
        d = mutate_json_value(copy.deepcopy(base), rng)
        if not isinstance(d, dict):
            continue
        if i % 2:
            d.pop("entry_sha256", None)
        elif isinstance(d, dict):
            d["entry_sha256"] = _entry_digest(d)
        entry.write_text(json.dumps(d))
        got = read_cache_entry(entry, key)
        if got is not None:
            got.summary()
    legacy = {k: v for k, v in base.items() if k != "entry_sha256"}
    entry.write_text(json.dumps(legacy))
    assert read_cache_entry(entry, key).to_dict() == _result().to_dict()
    entry.write_text(json.dumps(dict(legacy, luts="many")))
    assert read_cache_entry(entry, key) is None
    entry.write_text(json.dumps(dict(base, key="another")))
    assert read_cache_entry(entry, key) is None   # an entry copied from another design


def test_synth_cache_hostile_entries_are_misses_and_never_followed_for_writing(tmp_path, monkeypatch):
    from bitmos.explore import synth

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(synth, "tool_version", lambda name: "test")
    monkeypatch.setattr(synth, "find_tool", lambda name: [name])
    ran = []

    def fake_run(cmd, *, cwd, timeout, log, what):
        ran.append(what)
        raise synth.SynthError(f"{what} ran")
    monkeypatch.setattr(synth, "_run", fake_run)
    key = synth.synth_key("module m; endmodule", "m", "ecp5", "85k", synth.DEVICES["ecp5"]["85k"][1],
                          {"freq": 100.0, "seed": 1, "ooc": True, "pnr": True}, {"yosys": "test", "nextpnr-ecp5": "test"})
    entry = cache / f"{key}.json"
    outside = tmp_path / "precious.txt"
    outside.write_text("keep\n")

    def synthesize():
        # a work folder of the test's own: a failed run keeps its folder for inspection
        return synth.synthesize("module m; endmodule", "m", target="ecp5", device="85k", cache_dir=cache,
                                workdir=tmp_path / "work")

    for make in (lambda: entry.mkdir(), lambda: os.mkfifo(entry), lambda: entry.symlink_to(outside),
                 lambda: entry.write_bytes(b"\xff\xfe"), lambda: entry.write_text('{"key": "' + key + '"}'),
                 lambda: entry.write_text("[1, 2]"), lambda: entry.write_text("{" * 100000)):
        make()
        with pytest.raises(synth.SynthError, match="yosys ran"):   # a miss: synthesis starts again
            synthesize()
        if entry.is_dir() and not entry.is_symlink():
            entry.rmdir()
        else:
            entry.unlink()
    assert outside.read_text() == "keep\n"
    # a whole entry of this key is a hit
    r = _result()
    r.key = key
    assert synth.write_cache_entry(entry, r) is None
    got = synthesize()
    assert got.cached and got.luts == 1234 and len(ran) == 7
    # a symlinked entry is replaced, never written through
    entry.unlink()
    entry.symlink_to(outside)
    assert synth.write_cache_entry(entry, r) is None
    assert outside.read_text() == "keep\n" and not entry.is_symlink()


def test_synth_cache_write_failure_keeps_the_result(tmp_path):
    from bitmos.explore.synth import write_cache_entry
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be\n")
    problem = write_cache_entry(blocker / "k.json", _result())
    assert problem and "cannot write" in problem
