"""`bitmos verify` as a new user runs it: from a fresh folder, default (relative) work folder, and its errors."""

import pytest

from bitmos.app.cli import main

from .rtl_helpers import have_simulator as _have, needs_verilator


@needs_verilator
def test_verify_from_a_fresh_folder_with_the_default_work_folder(fresh_folder, capsys):
    # default arguments except the scope: 2 linears x (prefill + 2 decode steps) keeps the test short
    assert main(["verify", "--layers", "2", "--tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "PASS: 6/6 binarized-linear calls (2 linears x 3 steps" in out, out
    assert "Traceback" not in out
    assert (fresh_folder / "bitmos-verify" / "report.json").exists()   # the relative default, resolved


def test_verify_toolchain_failure_is_one_line(fresh_folder, capsys, monkeypatch):
    from bitmos.rtl import runner

    def broken_emit(*a, **k):
        raise RuntimeError("yosys: out of memory")
    monkeypatch.setattr(runner, "_emit", broken_emit)
    monkeypatch.setenv("BITMOS_RTL_BUILD", str(fresh_folder / "build"))
    sim = "verilator" if _have("verilator") else "icarus"
    if not _have(sim):
        pytest.skip("no HDL simulator installed")
    assert main(["verify", "--layers", "1", "--tokens", "1", "--sim", sim]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    bench = "native" if sim == "verilator" else "fast"   # --bench auto
    assert f"emitting the {bench} design of config 'small' failed" in err[0] and "emit.log" in err[0]


def test_verify_rejects_bad_counts(fresh_folder, capsys):
    assert main(["verify", "--tokens", "0"]) == 2
    assert "--tokens must be at least 1" in capsys.readouterr().err
    assert main(["verify", "--layers", "0"]) == 2
    assert "--layers must be at least 1" in capsys.readouterr().err
