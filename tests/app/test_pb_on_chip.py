"""Structured PB-LLM (Shang et al., 2023; salient input channels in int8) on the chip: each linear as a sign layer
and an int8 layer (WBITS = 8) whose outputs the host adds; `bitmos demo` bit for bit against golden on small-w8,
`bitmos verify` on its RTL, and one line naming small-w8 when the default chip cannot run it."""

import json

import pytest
import torch

from bitmos.app.cli import main

from .rtl_helpers import needs_verilator


@pytest.fixture(scope="module")
def pb_checkpoint(tmp_path_factory):
    from bitmos.model.checkpoint import load_shipped, save_checkpoint
    from bitmos.model.distill import make_student
    teacher, _ = load_shipped("teacher")
    torch.manual_seed(0)
    student = make_student(teacher, "pb", act_bits=8, pb_salient="channels")   # PB-LLM's init, no training
    path = tmp_path_factory.mktemp("pb") / "pb.safetensors"
    save_checkpoint(path, student)
    return path


def test_pb_demo_matches_golden(pb_checkpoint, tmp_path, capsys):
    assert main(["demo", "--checkpoint", str(pb_checkpoint), "--config", "small-w8", "--tokens", "3",
                 "--out", str(tmp_path / "d"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    # 28 model linears, each two chip layers (sign part and int8 part), for 3 tokens
    assert rep["matches_golden"] and rep["layer_mismatches"] == [] and rep["layer_runs"] == 2 * 28 * 3
    assert rep["decode"]["cycles"] > 0


def test_pb_on_the_default_chip_names_the_preset_that_runs_it(pb_checkpoint, tmp_path, capsys):
    assert main(["demo", "--checkpoint", str(pb_checkpoint), "--tokens", "1", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "8-bit integer weights (PB-LLM's int8 salient part)" in err[0]
    assert err[0].endswith("the presets that hold every layer of this model: small-w8")
    assert not (tmp_path / "d").exists()


@needs_verilator
def test_pb_verify_on_the_rtl(pb_checkpoint, fresh_folder, capsys):
    assert main(["verify", "--checkpoint", str(pb_checkpoint), "--config", "small-w8", "--tokens", "2"]) == 0
    assert "PASS: 112/112 binarized-linear calls (56 linears x 2 steps" in capsys.readouterr().out
