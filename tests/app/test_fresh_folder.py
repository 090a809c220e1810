"""Bad inputs a user tried from a fresh folder (issue 22, second pass): each is one line and exit 2, and a
sweep spec cannot choose a folder outside the current one."""

from __future__ import annotations

import os

import pytest

from .test_cli_errors import fails_cleanly, run

SPEC = 'base = "small"\nmodel = "toy"\nprefill_tokens = 4\nworkers = 0\n[grid]\nrows = [2]\n'


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    return work


def test_a_sweep_name_is_mapped_to_one_folder_name(fresh, capsys):
    (fresh / "s.toml").write_text('name = "../../escape"\n' + SPEC)
    rc, _, err = run(["sweep", "s.toml"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in fresh.iterdir()) == ["s.toml", "sweep-.._.._escape"]
    assert sorted(p.name for p in fresh.parent.parent.iterdir()) == ["a"]


@pytest.mark.parametrize("out", ["../../x", "/tmp/bitmos-spec-escape", ""])
def test_a_sweep_spec_out_must_stay_below_the_current_folder(fresh, capsys, out):
    (fresh / "s.toml").write_text(f'name = "t"\nout = "{out}"\n' + SPEC)
    fails_cleanly(["sweep", "s.toml"], capsys, match="must be a relative folder without '..'")
    assert sorted(p.name for p in fresh.iterdir()) == ["s.toml"]


def test_empty_or_cut_sweep_specs(fresh, capsys):
    fails_cleanly(["sweep", os.devnull], capsys, match="the sweep spec sets nothing")
    (fresh / "s.toml").write_text('name = "t"\n' + SPEC + "[set]\next_mem_mib = 12")
    fails_cleanly(["sweep", "s.toml"], capsys, match="has no line end")
    assert sorted(p.name for p in fresh.iterdir()) == ["s.toml"]


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_endless_and_device_files(fresh, capsys):
    fails_cleanly(["config", "/dev/zero"], capsys, match="larger than 256 MiB")
    fails_cleanly(["asm", "/dev/zero", "-o", "p.bmprog"], capsys, match="larger than 256 MiB")
    fails_cleanly(["simulate", "/dev/zero"], capsys, match="is not a regular file")
    fails_cleanly(["disasm", "/dev/zero"], capsys, match="is not a regular file")
    fails_cleanly(["compile", "/dev/zero", "--config", "small", "-o", "o"], capsys, match="is not a regular file")
    fails_cleanly(["disasm", str(fresh)], capsys, match="is a folder, not a file")
    assert list(fresh.iterdir()) == []


def test_a_config_from_a_pipe_is_read(fresh, capsys):
    r, w = os.pipe()
    os.write(w, b'[accelerator]\nrows = 8\npreset = "small"\n')
    os.close(w)
    try:
        rc, out, err = run(["config", f"/dev/fd/{r}"], capsys)
    finally:
        os.close(r)
    assert rc == 0 and "rows = 8" in out, err


def test_an_output_that_is_a_fifo_or_folder_is_never_replaced(fresh, capsys):
    """A rename over a non-regular file replaces it (as root, ``-o /dev/null`` would replace /dev/null for
    every process): every file writer refuses. A FIFO stands in for a device here."""
    from bitmos.errors import FormatError
    from bitmos.fileio import write_bytes_atomic
    fifo = fresh / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(FormatError, match="is not a regular file"):
        write_bytes_atomic(fifo, b"x")
    (fresh / "p.s").write_text("halt\n")
    fails_cleanly(["asm", "p.s", "-o", fifo], capsys, match="is not a regular file")
    fails_cleanly(["asm", "p.s", "-o", fresh], capsys, match="is a folder")
    fails_cleanly(["train", "--out", fifo, "--steps", "1"], capsys, match="--out: ")
    fails_cleanly(["generate", fifo, "--prompt", "hi"], capsys, match="is not a regular file")
    assert fifo.is_fifo() and sorted(p.name for p in fresh.iterdir()) == ["fifo", "p.s"]
