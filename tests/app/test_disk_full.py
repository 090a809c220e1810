"""A real full disk (issue 22), not a monkeypatched writer: each command runs as ``python -m bitmos.app.cli`` in
a child whose largest file is capped with ``RLIMIT_FSIZE``, so the kernel refuses the write with EFBIG exactly
as a full filesystem refuses it with ENOSPC. The run must print one line ``bitmos CMD: error: ...``, exit 2,
leave the previous output as it was and leave no temporary file or folder behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .test_cli_errors import _export, tree

resource = pytest.importorskip("resource")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics of Linux")


def bitmos(argv, *, max_file_bytes: int | None = None, cwd=None) -> subprocess.CompletedProcess:
    def cap():
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    return subprocess.run([sys.executable, "-B", "-m", "bitmos.app.cli", *map(str, argv)], capture_output=True,
                          text=True, preexec_fn=cap, cwd=cwd, timeout=600)


def assert_one_line_efbig(p: subprocess.CompletedProcess, cmd: str) -> None:
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    assert len(lines) == 1 and lines[0].startswith(f"bitmos {cmd}: error: "), p.stderr
    assert "File too large" in lines[0], lines[0]


def no_temp_left(folder) -> list[str]:
    return [q.name for q in folder.parent.iterdir() if q.name.startswith(".")]


def test_compile_into_an_existing_folder_on_a_full_disk(tmp_path):
    exp = _export(tmp_path, names=("layers.0.mlp.up_proj", "layers.0.mlp.down_proj", "layers.1.mlp.up_proj"))
    out = tmp_path / "prog"
    p = bitmos(["compile", exp, "--config", "small", "--tokens", "2", "-o", out])
    assert p.returncode == 0, p.stderr
    before = tree(out)
    biggest = max(q.stat().st_size for q in out.iterdir())
    assert biggest > 2048
    for limit in (1, 512, biggest // 2):   # no file fits / the small ones fit / all but the largest
        p = bitmos(["compile", exp, "--config", "small", "--tokens", "4", "-o", out], max_file_bytes=limit)
        assert_one_line_efbig(p, "compile")
        assert tree(out) == before, f"limit {limit}: the old folder changed"
        assert not no_temp_left(out), no_temp_left(out)
    # and it still simulates as the old compile
    p = bitmos(["simulate", out, "--json"])
    assert p.returncode == 0 and json.loads(p.stdout)["tokens"] == 2, p.stderr[-500:]


def test_rtl_emit_on_a_full_disk(tmp_path):
    out = tmp_path / "rtl"
    assert bitmos(["rtl", "emit", "--config", "tiny", "-o", out]).returncode == 0
    (out / "notes.txt").write_text("mine\n")
    before = tree(out)
    p = bitmos(["rtl", "emit", "--config", "small", "-o", out], max_file_bytes=64 << 10)   # the .v is ~300 KiB
    assert_one_line_efbig(p, "rtl")
    assert tree(out) == before
    assert not no_temp_left(out)


def test_asm_single_file_on_a_full_disk(tmp_path):
    src = tmp_path / "p.s"
    src.write_text("nop\n" * 2000 + "halt\n")
    prog = tmp_path / "p.bmprog"
    small = tmp_path / "small.s"
    small.write_text("halt\n")
    assert bitmos(["asm", small, "-o", prog]).returncode == 0
    old = prog.read_bytes()
    p = bitmos(["asm", src, "-o", prog], max_file_bytes=4096)
    assert_one_line_efbig(p, "asm")
    assert prog.read_bytes() == old
    assert sorted(q.name for q in tmp_path.iterdir()) == ["p.bmprog", "p.s", "small.s"]


def test_estimate_plots_on_a_full_disk(tmp_path):
    plots = tmp_path / "est"
    argv = ["estimate", "--model", "toy", "--config", "asic32", "--prefill", "4", "--decode", "2", "--plots", plots]
    p = bitmos(argv)
    if p.returncode != 0:
        pytest.skip(f"estimate --plots unavailable here: {p.stderr.strip()[-200:]}")
    before = tree(plots)
    p = bitmos(argv[:-3] + ["3"] + argv[-2:], max_file_bytes=2048)
    assert_one_line_efbig(p, "estimate")
    assert tree(plots) == before
    assert not no_temp_left(plots)


def test_train_checkpoint_on_a_full_disk(tmp_path):
    out = tmp_path / "m.safetensors"
    argv = ["train", "--out", out, "--steps", "2", "--seq-len", "8", "--batch-size", "2", "--dim", "16",
            "--n-layers", "1", "--n-heads", "2", "--hidden-dim", "32", "--eval-interval", "0", "--no-progress"]
    p = bitmos(argv)
    assert p.returncode == 0, p.stderr[-500:]
    before = {q.name: q.read_bytes() for q in tmp_path.iterdir()}
    p = bitmos(argv[:4] + ["4"] + argv[5:] + ["--resume"], max_file_bytes=4096)
    assert_one_line_efbig(p, "train")
    assert {q.name: q.read_bytes() for q in tmp_path.iterdir()} == before   # the pair to resume from is whole
    p = bitmos(argv[:4] + ["4"] + argv[5:] + ["--resume"])
    assert p.returncode == 0, p.stderr[-500:]
