"""``bitmos rtl emit -o DIR`` changes DIR whole (issue 22): a failing or interrupted emit leaves the folder as
it was and no temporary sibling; a second config's emit keeps the first one's files; a folder of other files
is refused; a config name is never a path."""

from __future__ import annotations

import errno
import os

import pytest

from bitmos.rtl import emit as emit_mod
from bitmos.rtl.emit import TOP_NAME

from .test_cli_errors import fails_cleanly, run, tree


@pytest.fixture
def fake_convert(monkeypatch):
    """Skip Amaranth and Yosys: a tiny module text and a manifest without ports (the folder logic is tested)."""
    runs = iter(range(10**6))   # every emit writes different text, so a half-done one shows
    monkeypatch.setattr(emit_mod, "_convert",
                        lambda cfg: (None, f"module {TOP_NAME}_{cfg.name}; endmodule // {next(runs)}\n"))
    monkeypatch.setattr(emit_mod, "manifest", lambda cfg, top, v: {"top": TOP_NAME, "verilog": v,
                                                                   "config": cfg.to_dict()})


def _no_temp_siblings(folder):
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


def test_emit_into_a_fresh_folder_and_a_second_config_keeps_the_first(tmp_path, capsys, fake_convert):
    out = tmp_path / "out"
    assert run(["rtl", "emit", "--config", "tiny", "-o", out], capsys)[0] == 0
    assert run(["rtl", "emit", "--config", "small", "-o", out], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{TOP_NAME}_{n}.{e}" for n in ("tiny", "small")
                                                           for e in ("v", "json"))
    assert not _no_temp_siblings(out)


@pytest.mark.parametrize("fail_at", ["convert", "verilog", "manifest"])
def test_failing_emit_leaves_the_existing_folder_whole(tmp_path, capsys, monkeypatch, fake_convert, fail_at):
    out = tmp_path / "out"
    assert run(["rtl", "emit", "--config", "tiny", "-o", out], capsys)[0] == 0
    (out / "notes.txt").write_text("mine\n")
    before = tree(out)

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(a[0]) if a else None)
    target = {"convert": "_convert", "verilog": "write_text_atomic", "manifest": "write_json_atomic"}[fail_at]
    monkeypatch.setattr(emit_mod, target, disk_full)
    fails_cleanly(["rtl", "emit", "--config", "tiny", "-o", out], capsys, match="No space left")
    assert tree(out) == before
    assert not _no_temp_siblings(out)


def test_emit_refuses_a_folder_of_other_files(tmp_path, capsys, fake_convert):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work\n")
    before = tree(out)
    fails_cleanly(["rtl", "emit", "--config", "tiny", "-o", out], capsys, match=f"holds no {TOP_NAME}_*.json")
    assert tree(out) == before


@pytest.mark.parametrize("name", ["../../escape", "/abs/x", "a/b", ".hidden"])
def test_a_config_name_is_never_a_path(tmp_path, capsys, fake_convert, name):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[accelerator]\nname = "{name}"\npreset = "tiny"\n')
    out = tmp_path / "a" / "b" / "out"
    fails_cleanly(["rtl", "emit", "--config", cfg, "-o", out], capsys, match="not a safe file name")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["c.toml"]


def test_emit_killed_midway_leaves_no_half_folder(tmp_path):
    """A real interruption: SIGKILL while the Verilog is being written leaves the old folder whole."""
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from bitmos.rtl import emit as m
        m._convert = lambda cfg: (None, "module x; endmodule // " + str(os.getpid()) + "\\n")
        m.manifest = lambda cfg, top, v: {{"top": "x"}}
        from bitmos.app.cli import main
        if sys.argv[1] == "kill":
            def die(*a, **k):     # the Verilog is written, the manifest not yet
                os.kill(os.getpid(), signal.SIGKILL)
            m.write_json_atomic = die
        sys.exit(main(["rtl", "emit", "--config", "tiny", "-o", {str(out)!r}]))
    """)
    assert subprocess.run([sys.executable, "-c", script, "ok"]).returncode == 0
    before = tree(out)
    p = subprocess.run([sys.executable, "-c", script, "kill"])
    assert p.returncode == -9
    files = lambda t: {k: v for k, v in t.items() if k != "<siblings>"}   # noqa: E731
    assert files(tree(out)) == files(before)   # a SIGKILL may leave a .out.*.tmp sibling, never a changed folder
    assert subprocess.run([sys.executable, "-c", script, "ok"]).returncode == 0   # and the next emit works


def test_verify_refuses_a_config_name_that_is_a_path(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[accelerator]\nname = "../../../escape"\npreset = "tiny"\n')
    monkeypatch.chdir(tmp_path)
    fails_cleanly(["verify", "--config", cfg, "--workdir", tmp_path / "w"], capsys, match="not a safe file name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]
