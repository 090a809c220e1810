"""Every subcommand on bad arguments and bad files: a one-line ``bitmos CMD: error: ...``, a non-zero exit,
no traceback; a failing run leaves an existing output folder exactly as it was; nothing is written outside
the output folder; a killed sweep leaves no worker behind.

Runs go through ``bitmos.app.cli.main`` in this process (an exception escaping it is the traceback a user
would see); the sweep kill test runs the real console script.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bitmos.app.cli import main
from bitmos.config import preset_config
from bitmos.container import MemoryImage, Program, manifest_digest
from bitmos.export import _META_KEY, _digest, BinaryLinearExport, ModelExport

#: (subcommand, case) -> outcome, summed up by test_zz_counts (run with -s to print them)
RESULTS: Counter = Counter()


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def fails_cleanly(argv, capsys, *, match: str | None = None) -> str:
    """Run ``argv``: it must exit non-zero with exactly one non-empty stderr line ``bitmos CMD: error: ...``."""
    rc, _, err = run(argv, capsys)
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("[")]  # '[synth]' progress lines
    RESULTS[(str(argv[0]), "error")] += 1
    assert rc != 0, f"{argv}: exit 0, stderr {err!r}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"{argv}: expected one error line, got {err!r}"
    assert lines[0].startswith(f"bitmos {argv[0]}: error: "), lines[0]
    if match:
        assert match in lines[0], f"{match!r} not in {lines[0]!r}"
    return lines[0]


def tree(path: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under ``path`` (and the folder's siblings' names)."""
    out = {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
           for p in sorted(path.rglob("*")) if p.is_file()}
    out["<siblings>"] = ",".join(sorted(p.name for p in path.parent.iterdir()))
    return out


def _export(tmp_path, names=("layers.0.mlp.up_proj",)) -> Path:
    rng = np.random.default_rng(0)
    lins = [BinaryLinearExport(n, 32, 8, 4, 8, rng.random((8, 32)) < 0.5,
                               rng.integers(-3000, 3000, (4, 32)).astype(np.int16), 12,
                               rng.integers(100, 4000, (4, 32)).astype(np.int16), 12,
                               rng.integers(-4000, 4000, (4, 8)).astype(np.int16), 12, scheme="mos")
            for n in names]
    p = tmp_path / "e.safetensors"
    ModelExport({"dim": 32}, lins, {}, {}).save(p)
    return p


def _forge_export_names(path: Path, names: list[str]) -> None:
    """Rename the layers inside an export and recompute its checksum (what a hostile file would do)."""
    from safetensors.numpy import load, save

    data = path.read_bytes()
    hlen = struct.unpack_from("<Q", data, 0)[0]
    header = json.loads(json.loads(data[8:8 + hlen])["__metadata__"][_META_KEY])
    tensors = load(data)
    for layer, new in zip(header["layers"], names):
        for key in [k for k in tensors if k.startswith(layer["name"] + ".")]:
            tensors[new + key[len(layer["name"]):]] = tensors.pop(key)
        layer["name"] = new
    header["sha256"] = _digest(tensors, header)
    path.write_bytes(save(tensors, metadata={_META_KEY: json.dumps(header)}))


@pytest.fixture
def compiled(tmp_path, capsys):
    out = tmp_path / "prog"
    rc, _, err = run(["compile", _export(tmp_path), "--config", "small", "-o", out], capsys)
    assert rc == 0, err
    return out


# ---- 1. no writes or reads outside the output folder ------------------------------------------------------

@pytest.mark.parametrize("evil", ["../../escaped", "/tmp/bitmos-abs-escape", "..", ".hidden", "a/b"])
def test_compile_refuses_layer_names_that_are_paths(tmp_path, capsys, evil):
    exp = _export(tmp_path)
    _forge_export_names(exp, [evil])
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*")} | set(Path("/tmp").glob("bitmos-abs-escape*"))
    fails_cleanly(["compile", exp, "--config", "small", "-o", work / "out"], capsys, match="not a safe file name")
    after = {p for p in tmp_path.rglob("*")} | set(Path("/tmp").glob("bitmos-abs-escape*"))
    assert after == before   # traversal writes: 0
    RESULTS[("compile", "traversal writes")] += 0


@pytest.mark.parametrize("entry", ["../outside.bmprog", "/etc/passwd", "sub/../../x.bmprog"])
def test_simulate_refuses_manifest_paths(compiled, tmp_path, capsys, entry):
    man_path = compiled / "manifest.json"
    man = json.loads(man_path.read_text())
    (tmp_path / "outside.bmprog").write_bytes((compiled / man["layers"][0]["programs"][0]["file"]).read_bytes())
    man["layers"][0]["programs"][0]["file"] = entry
    man["manifest_sha256"] = manifest_digest(man)   # forged consistently: only the name check stops it
    man_path.write_text(json.dumps(man))
    fails_cleanly(["simulate", compiled], capsys, match="not a safe file name")


# ---- 3. whole folders -----------------------------------------------------------------------------------

def _fail_after(monkeypatch, module, name: str, calls: int, err: int = errno.ENOSPC, count=None):
    """Make ``module.name`` (a file writer) raise ``err`` after ``calls`` calls; modules given the same
    ``count`` share one budget."""
    real = getattr(module, name)
    count = {"n": 0} if count is None else count

    def failing(*a, **kw):
        count["n"] += 1
        if count["n"] > calls:
            raise OSError(err, os.strerror(err), str(a[0]) if a else None)
        return real(*a, **kw)
    monkeypatch.setattr(module, name, failing)


def test_compile_failing_midway_leaves_the_old_folder(compiled, tmp_path, capsys, monkeypatch):
    """Disk full after each possible number of files: the old folder stays whole and simulates as before."""
    import bitmos.compiler.api as api
    import bitmos.fileio as fileio

    _, want, _ = run(["simulate", compiled], capsys)
    exp2 = tmp_path / "two"
    exp2.mkdir()
    exp2 = _export(exp2, names=("layers.0.mlp.up_proj", "layers.0.mlp.down_proj"))
    before = tree(compiled)
    for writes in range(6):   # 2 programs, 2 listings, the memory image, the manifest
        with monkeypatch.context() as m:
            shared = {"n": 0}   # program and memory writes (api) and listing and manifest writes (fileio)
            _fail_after(m, api, "write_bytes_atomic", writes, count=shared)
            _fail_after(m, fileio, "write_bytes_atomic", writes, count=shared)
            fails_cleanly(["compile", exp2, "--config", "small", "-o", compiled], capsys, match="No space left")
        assert tree(compiled) == before   # incomplete folders readable as whole: 0
        RESULTS[("compile", "failed midway, old folder intact")] += 1
        rc, out, _ = run(["simulate", compiled], capsys)
        assert rc == 0 and out == want


def test_a_mixture_of_two_compiles_is_refused(compiled, tmp_path, capsys):
    """Even a folder assembled by hand from two compiles: the manifest's hashes catch the odd file out."""
    other = tmp_path / "other"
    exp = tmp_path / "x"
    exp.mkdir()
    rc, _, _ = run(["compile", _export(exp), "--config", "small", "--tokens", "2", "-o", other], capsys)
    assert rc == 0
    name = json.loads((compiled / "manifest.json").read_text())["layers"][0]["programs"][0]["file"]
    (compiled / name).write_bytes((other / name).read_bytes())
    fails_cleanly(["simulate", compiled], capsys, match="does not match the SHA-256 in the manifest")


def test_output_folder_of_other_files_is_not_replaced(tmp_path, capsys):
    exp = _export(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = tree(mine)
    fails_cleanly(["compile", exp, "--config", "small", "-o", mine], capsys,
                  match="holds no manifest.json")
    assert tree(mine) == before


def test_simulate_plots_disk_full_keeps_old_plots(compiled, tmp_path, capsys, monkeypatch):
    import bitmos.sim.report as report

    plots = tmp_path / "plots"
    assert run(["simulate", compiled, "--plots", plots], capsys)[0] == 0
    before = tree(plots)
    _fail_after(monkeypatch, report, "write_bytes_atomic", 0)
    fails_cleanly(["simulate", compiled, "--plots", plots], capsys, match="No space left")
    assert tree(plots) == before


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_read_only_or_full_output_is_one_line(tmp_path, capsys, monkeypatch, err):
    import bitmos.fileio as fileio

    exp = _export(tmp_path)

    def refuse(*a, **kw):
        raise OSError(err, os.strerror(err), kw.get("dir"))
    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)   # every file write
    monkeypatch.setattr(fileio.tempfile, "mkdtemp", refuse)   # every folder write
    src = tmp_path / "p.s"
    src.write_text("halt\n")
    fails_cleanly(["asm", src, "-o", tmp_path / "p.bmprog"], capsys, match=os.strerror(err))
    fails_cleanly(["compile", exp, "--config", "small", "-o", tmp_path / "out"], capsys, match=os.strerror(err))


def test_estimate_plots_failure_keeps_old_folder(tmp_path, capsys, monkeypatch):
    import bitmos.fileio as fileio

    plots = tmp_path / "est"
    argv = ["estimate", "--model", "toy", "--config", "asic32", "--prefill", "4", "--decode", "2", "--plots", plots]
    assert run(argv, capsys)[0] == 0
    before = tree(plots)
    _fail_after(monkeypatch, fileio, "write_bytes_atomic", 0)   # estimate.json, after the plots
    fails_cleanly(argv, capsys, match="No space left")
    assert tree(plots) == before


# ---- 4. bad arguments and bad files, per subcommand ---------------------------------------------------------

def test_bad_arguments(tmp_path, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)))
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    trunc = tmp_path / "trunc.toml"
    trunc.write_text("[accelerator]\nrows = ")
    missing = tmp_path / "missing"
    out = tmp_path / "o"
    cases = [
        (["config", folder], "is a folder"), (["config", binary], "binary file"), (["config", empty], "sets no fields"),
        (["config", trunc], "cannot parse"), (["config", missing], "does not exist"),
        (["asm", missing, "-o", out], "does not exist"), (["asm", folder, "-o", out], "is a folder"),
        (["asm", binary, "-o", out], "binary file"),
        (["compile", missing, "--config", "small", "-o", out], "does not exist"),
        (["compile", folder, "--config", "small", "-o", out], "is a folder, not a file"),
        (["compile", "x", "--config", "small", "-o", out, "--tokens", "0"], "--tokens: must be at least 1"),
        (["compile", "x", "--config", "small", "-o", out, "--tokens", "-3"], "--tokens: must be at least 1"),
        (["disasm", missing], "does not exist"), (["disasm", binary], "bad magic"),
        (["simulate", missing], "does not exist"), (["simulate", folder], "needs manifest.json"),
        (["simulate", binary], "bad magic"), (["simulate", "x", "--tokens", "0"], "--tokens"),
        (["train", "--out", out, "--seq-len", "0"], "--seq-len: must be at least 1"),
        (["train", "--out", out, "--steps", "-1"], "--steps"), (["train", "--out", out, "--threads", "0"], "--threads"),
        (["train", "--out", out, "--act-bits", "99"], "--act-bits"), (["train", "--out", out, "--lr", "nan"], "--lr"),
        (["distill", "--out", out], "needs --teacher"), (["distill", "--out", out, "--act-bits", "0"], "--act-bits"),
        (["eval", "--seq-len", "0"], "--seq-len"), (["eval", "--max-tokens", "0"], "--max-tokens"),
        (["eval", "--threads", "-2"], "--threads"), (["eval", "--act-bits", "20"], "--act-bits"),
        (["eval", missing], "cannot read checkpoint"), (["eval", binary], "not a valid safetensors"),
        (["export", missing, "-o", out], "cannot read checkpoint"), (["export", "-o", out, "--threads", "0"], "--threads"),
        (["generate", "--temperature", "nan"], "--temperature"), (["generate", "--temperature", "-1"], "--temperature"),
        (["generate", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["generate", "--max-new-tokens", "100000"], "exceeds the model's context"),
        (["generate", binary], "not a valid safetensors"),
        (["demo", "--tokens", "0"], "--tokens"), (["demo", "--tokens", "-5"], "--tokens"),
        (["demo", "--config", binary], "binary file"), (["demo", "--checkpoint", missing], "cannot read"),
        (["estimate", "--prefill", "-1"], "--prefill"), (["estimate", "--model", folder], "neither a file"),
        (["estimate", "--model", binary], "not a readable JSON"), (["estimate", "--config", empty], "sets no fields"),
        (["rtl", "emit", "--config", folder, "-o", out], "is a folder"),
        (["synth", "--verilog", missing], "does not exist"), (["synth", "--verilog", folder], "is a folder"),
        (["synth", "--verilog", binary], "binary file"), (["synth", "--freq", "nan"], "--freq"),
        (["synth", "--config", empty], "sets no fields"),
        (["sweep", missing], "does not exist"), (["sweep", folder], "is a folder"), (["sweep", binary], "binary file"),
        (["sweep", "x", "--workers", "-1"], "--workers"),
        (["verify", "--config", binary], "binary file"),
    ]
    for argv, match in cases:
        fails_cleanly(argv, capsys, match=match)


def test_sizes_beyond_the_config_are_refused_up_front(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[accelerator]\next_mem_mib = 1\npreset = "small"\n')
    t0 = time.perf_counter()
    fails_cleanly(["estimate", "--model", "toy", "--config", cfg, "--prefill", "300000", "--decode", "1"], capsys,
                  match="beyond the external memory")
    fails_cleanly(["compile", _shape(tmp_path, 1000), "--config", cfg, "-o", tmp_path / "o", "--timing-only"],
                  capsys, match="binarized linears need")
    assert time.perf_counter() - t0 < 30   # refused up front, not after compiling 7000 layers


def _shape(tmp_path, n_layers: int) -> Path:
    p = tmp_path / "shape.json"
    p.write_text(json.dumps({"dim": 256, "hidden_dim": 256, "n_layers": n_layers, "n_heads": 4}))
    return p


def _spec(tmp_path, body: str) -> Path:
    p = tmp_path / "s.toml"
    model = "" if "[model]" in body else 'model = "toy"\n'
    p.write_text('name = "t"\nbase = "small"\nprefill_tokens = 4\nworkers = 0\n' + model + body)
    return p


@pytest.mark.parametrize("body, match", [
    ('energy_table = "no_such_table"\n', "neither a file nor a shipped"),
    ('objectives = ["max:tokens_per_second"]\n', "unknown objective metric"),
    ('objectives = ["fastest"]\n', "must be 'max:NAME'"),
    ('[grid]\nrows = "4"\n', "must be a non-empty list"),
    ('[grid]\nrows = []\n', "must be a non-empty list"),
    ('[set]\nrows = 0\n', "out of range"),
    ('[model]\ndim = 0\nhidden_dim = 4\nn_layers = 1\nn_heads = 1\n', "positive integer"),
    ('points = [4]\n', "points[0] must be a table"),
    ('auto_buffers = "yes"\n', "auto_buffers must be true/false"),
    ('backend = "gpu"\n', "unknown backend 'gpu'"),
])
def test_sweep_spec_errors_fail_before_the_sweep_starts(tmp_path, capsys, body, match):
    spec = _spec(tmp_path, body)
    fails_cleanly(["sweep", spec, "-o", tmp_path / "out"], capsys, match=match)
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_sweep_spec_value_types(tmp_path, capsys):
    p = tmp_path / "s.toml"
    p.write_text('name = "t"\nbase = "small"\nmodel = "toy"\nprefill_tokens = "many"\n')
    fails_cleanly(["sweep", p], capsys, match="prefill_tokens must be an integer")
    p.write_text('name = "t"\nbase = "small"\nmodel = "toy"\nprefill_tokens = 0\n')
    fails_cleanly(["sweep", p], capsys, match="prefill_tokens = 0")
    p.write_text('name = "t"\nworkers = -1\n')
    fails_cleanly(["sweep", p], capsys, match="workers = -1")


def test_sweep_duplicate_grid_values_do_not_duplicate_results(tmp_path, capsys):
    spec = _spec(tmp_path, '[grid]\nrows = [2, 2, 4, 2]\n[[points]]\nrows = 4\n')
    rc, _, err = run(["sweep", spec, "-o", tmp_path / "out", "--json"], capsys)
    assert rc == 0, err
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert sorted(r["overrides"]["rows"] for r in rows) == [2, 4]


def test_manifest_values_are_checked(compiled, capsys):
    man_path = compiled / "manifest.json"
    original = man_path.read_text()
    for change, match in ((lambda m: m.update(tokens=0), "'tokens' must be a positive integer"),
                          (lambda m: m.update(layers="all"), "'layers' must be a non-empty list"),
                          (lambda m: m.update(timing_only="no"), "'timing_only' must be true or false"),
                          (lambda m: m["layers"][0].update(programs=[{"file": "x.bmprog"}]), "needs 'file' and"),
                          (lambda m: m.update(version=1), "manifest version 1")):
        man = json.loads(original)
        change(man)
        man["manifest_sha256"] = manifest_digest(man)
        man_path.write_text(json.dumps(man))
        fails_cleanly(["simulate", compiled], capsys, match=match)
    man = json.loads(original)
    man["tokens"] = 3   # edited without the checksum
    man_path.write_text(json.dumps(man))
    fails_cleanly(["simulate", compiled], capsys, match="manifest checksum mismatch")


# ---- 5. resource bounds ---------------------------------------------------------------------------------------

def test_store_near_the_top_of_a_huge_memory_is_refused_before_it_allocates(tmp_path, capsys):
    cfg = tmp_path / "huge.toml"
    cfg.write_text('[accelerator]\next_mem_mib = 262144\npreset = "small"\n')
    src = tmp_path / "p.s"
    top = (262144 << 20) // 64 - 1024          # EBASE near the top of 256 GiB
    src.write_text(f"setr EBASE {top}\nstore buf=O line=0 nlines=1 ext=0\nwait\nhalt\n")
    prog = tmp_path / "p.bmprog"
    assert run(["asm", src, "--config", cfg, "-o", prog], capsys)[0] == 0
    t0 = time.perf_counter()
    fails_cleanly(["simulate", prog], capsys, match="--max-memory-mib")
    assert time.perf_counter() - t0 < 10
    # the same program in timing-only mode needs no memory and runs
    rc, out, _ = run(["simulate", prog, "--timing-only"], capsys)
    assert rc == 0 and "cycles" in out


def test_cycle_budget(compiled, capsys):
    fails_cleanly(["simulate", compiled, "--max-cycles", "10"], capsys, match="--max-cycles 10")
    assert run(["simulate", compiled, "--max-cycles", "100000000"], capsys)[0] == 0


# ---- 6. a killed sweep leaves no workers ------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_sweep_ends_its_workers(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('name = "k"\nbase = "small"\nmodel = "llama-2-7b"\nprefill_tokens = 64\nworkers = 2\n'
                    '[set]\next_mem_mib = 8192\n[grid]\nrows = [2, 4, 8]\nlanes = [32, 64, 128]\n')
    proc = subprocess.Popen([sys.executable, "-m", "bitmos.app.cli", "sweep", str(spec), "-o", str(tmp_path / "o")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        workers = []
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.2)
            workers = [c for c in _children(proc.pid) if _alive(c)]
        assert len(workers) >= 2, "the sweep did not start its workers"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        left = [w for w in workers if _alive(w)]
        for w in left:
            os.kill(w, signal.SIGKILL)
        assert not left, f"workers {left} outlived the killed sweep"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_zz_counts(capsys):
    """Prints what this file tried (pytest -s); the counts are the evidence on the issue."""
    per = Counter()
    for (cmd, _), n in RESULTS.items():
        per[cmd] += n
    with capsys.disabled():
        print("\nCLI error cases per subcommand:", dict(sorted(per.items())), "total", sum(per.values()))


def test_a_reader_that_goes_away_is_not_a_traceback():
    """`bitmos config small | head -1`: the pipe closes before the output is written; no traceback."""
    import subprocess
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from bitmos.app.cli import main; "
                             "sys.exit(main(['config', 'small']))"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()   # before the child has imported anything, so its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and err == "", err


def test_rtl_commands_refuse_the_vector_unit_in_one_line(tmp_path, capsys):
    """The vector unit is simulated only: every command that builds the RTL says so before building anything."""
    cfg = tmp_path / "vec.toml"
    cfg.write_text('vector_unit = 1\npreset = "tiny"\n')
    for argv in (["rtl", "emit", "--config", str(cfg), "-o", str(tmp_path / "out")],
                 ["verify", "--config", str(cfg), "--tokens", "1", "--workdir", str(tmp_path / "v")],
                 ["synth", "--config", str(cfg), "--no-pnr", "--no-cache"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the RTL has no vector unit yet" in err, (argv, err)
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "v").exists()
