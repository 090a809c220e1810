"""BitNet (Wang et al., 2023) on the chip: its layers run as sign layers (signs of W - mean W, one scale) after the
host's parameter-free LayerNorm; `bitmos demo` bit for bit against golden, `bitmos verify` on the small RTL."""

import json

import pytest
import torch

from bitmos.app.cli import main

from .rtl_helpers import needs_verilator


@pytest.fixture(scope="module")
def bitnet_checkpoint(tmp_path_factory):
    from bitmos.model.checkpoint import load_shipped, save_checkpoint
    from bitmos.model.distill import make_student
    teacher, _ = load_shipped("teacher")
    torch.manual_seed(0)
    student = make_student(teacher, "bitnet", act_bits=8)    # BitNet's init from the shipped teacher, no training
    path = tmp_path_factory.mktemp("bitnet") / "bitnet.safetensors"
    save_checkpoint(path, student)
    return path


def test_bitnet_demo_matches_golden(bitnet_checkpoint, tmp_path, capsys):
    assert main(["demo", "--checkpoint", str(bitnet_checkpoint), "--tokens", "4", "--out", str(tmp_path / "d"),
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["matches_golden"] and rep["layer_mismatches"] == [] and rep["layer_runs"] == 28 * 4
    assert rep["decode"]["cycles"] > 0


def test_bitnet_layer_ops_run_its_layernorms_on_the_vector_unit(bitnet_checkpoint, capsys):
    """--layer-ops: BitNet's RMSNorms, residual adds and per-linear LayerNorms on the vector unit; the attention
    output and the SwiGLU product, which feed o_proj's and down_proj's LayerNorms in int32, stay on the host, and the
    report says so."""
    assert main(["demo", "--checkpoint", str(bitnet_checkpoint), "--tokens", "2", "--out", "", "--layer-ops",
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["matches_golden"] and rep["layer_mismatches"] == []
    assert rep["host_ops"] == ["attention", "SwiGLU"]
    assert rep["decode"]["cycles_by_component"]["vector unit"] > 0


@needs_verilator
def test_bitnet_verify_on_the_rtl(bitnet_checkpoint, fresh_folder, capsys):
    assert main(["verify", "--checkpoint", str(bitnet_checkpoint), "--tokens", "2"]) == 0
    assert "PASS: 56/56 binarized-linear calls (28 linears x 2 steps" in capsys.readouterr().out
