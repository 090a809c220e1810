import json

import pytest
import torch

from bitmos.model.__main__ import main
from bitmos.model.checkpoint import SHIPPED, load_shipped, shipped_path

shipped = pytest.mark.skipif(not all(shipped_path(n).exists() for n in SHIPPED), reason="no shipped checkpoints")


@shipped
def test_shipped_student_is_mos4_a8():
    model, meta = load_shipped("student")
    c = model.config
    assert (c.scheme, c.experts, c.act_bits) == ("mos", 4, 8)
    assert c.dim % 64 == 0 and c.hidden_dim % 64 == 0
    assert len(model.binarized_linears()) == 7 * c.n_layers


@shipped
def test_shipped_ternary_student_is_ternary_a8():
    model, meta = load_shipped("student-ternary")
    c = model.config
    assert (c.scheme, c.act_bits) == ("ternary", 8) and meta["step"] == meta["train_args"]["steps"]
    teacher, _ = load_shipped("teacher")
    assert all(getattr(c, f) == getattr(teacher.config, f) for f in ("dim", "n_layers", "n_heads", "hidden_dim"))
    trits = torch.cat([m.trits().flatten() for _, m in model.binarized_linears()])
    zero = (trits == 0).float().mean().item()
    assert set(trits.unique().tolist()) == {-1.0, 0.0, 1.0} and 0.05 < zero < 0.95


@shipped
def test_shipped_fbi_student_is_fbi_a8_and_runs_on_a_chip_with_a_router(tmp_path):
    from bitmos.config import preset_config
    from bitmos.errors import UnsupportedError
    from bitmos.compiler import compile_linear
    from bitmos.model.export import export_model

    model, meta = load_shipped("student-fbi")
    c = model.config
    assert (c.scheme, c.act_bits) == ("fbi", 8) and meta["step"] == meta["train_args"]["steps"]
    exp = export_model(model, "small")
    assert all(l.scheme == "fbi" and l.bias is not None and l.experts == 1 for l in exp.linears)
    assert compile_linear(exp.linears[0], preset_config("small"), 1).manifest["registers"]["BIAS"] == 1
    with pytest.raises(UnsupportedError, match="no router"):
        compile_linear(exp.linears[0], preset_config("tiny"), 1)


@shipped
def test_eval_shipped_json(capsys):
    assert main(["eval", "--json", "--max-tokens", "2048"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["teacher", "student"]
    assert all(1 < r["ppl"] < 50 and r["tokens"] == 2048 for r in rows)


@shipped
def test_generate_greedy(capsys):
    assert main(["generate", "--prompt", "Return the ", "--max-new-tokens", "20", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("Return the ")


def test_distill_without_teacher_is_user_error(tmp_path, capsys):
    assert main(["distill", "--out", str(tmp_path / "s.safetensors")]) == 2
    assert "distill needs --teacher CHECKPOINT or --hf-teacher DIR" in capsys.readouterr().err


def test_eval_corrupt_checkpoint_is_user_error(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    assert main(["eval", str(bad)]) == 2
    assert "not a valid safetensors file" in capsys.readouterr().err


def test_train_tiny_from_cli(tmp_path, text_corpus, capsys):
    out = tmp_path / "t.safetensors"
    assert main(["train", "--out", str(out), "--dim", "32", "--n-layers", "1", "--n-heads", "2",
                 "--hidden-dim", "64", "--max-seq-len", "32", "--steps", "3", "--batch-size", "2",
                 "--seq-len", "16", "--eval-tokens", "256", "--corpus", text_corpus, "--no-progress"]) == 0
    assert out.exists() and "val ppl" in capsys.readouterr().out


def _ternary_checkpoint(tmp_path):
    from bitmos.model.checkpoint import save_checkpoint
    from bitmos.model.config import ModelConfig
    from bitmos.model.transformer import Transformer
    m = Transformer(ModelConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_seq_len=64, scheme="ternary"))
    path = tmp_path / "ternary.safetensors"
    save_checkpoint(path, m)
    return path


def test_ternary_student_evaluates(tmp_path, capsys):
    path = _ternary_checkpoint(tmp_path)
    assert main(["eval", str(path), "--json", "--max-tokens", "512"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["scheme"] == "ternary" and row["act_bits"] == 8 and row["tokens"] == 512 and row["ppl"] > 1


def test_ternary_runs_on_the_chip_and_a_sign_only_chip_refuses_it(tmp_path, capsys):
    """A ternary student exports, runs its golden model and the demo on small (weight_bits = 2); on tiny (sign
    weights only) every command that compiles refuses it with one line (exit 2) and writes nothing."""
    from bitmos.app.cli import main as bitmos_main
    path = _ternary_checkpoint(tmp_path)
    assert bitmos_main(["export", str(path), "--config", "small", "-o", str(tmp_path / "t.bmx")]) == 0
    assert bitmos_main(["eval", str(path), "--golden", "--max-tokens", "256", "--accel", "small"]) == 0
    assert bitmos_main(["demo", "--checkpoint", str(path), "--tokens", "1", "--out", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    for argv in (["demo", "--checkpoint", str(path), "--config", "tiny", "--tokens", "1", "--out",
                  str(tmp_path / "demo-tiny")],
                 ["compile", str(tmp_path / "t.bmx"), "--config", "tiny", "-o", str(tmp_path / "prog")]):
        assert bitmos_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "weight_bits = 1" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "demo-tiny").exists() and not (tmp_path / "prog").exists()


@shipped
def test_scheme_ternary_binarizes_the_float_teacher(capsys):
    assert main(["eval", str(shipped_path("teacher")), "--scheme", "ternary", "--json", "--max-tokens", "512"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["scheme"] == "ternary" and 1 < row["ppl"] < 256


def test_unknown_scheme_is_a_usage_error(tmp_path, capsys):
    from bitmos.app.cli import main as bitmos_main
    assert bitmos_main(["distill", "--teacher", "t.safetensors", "--scheme", "trinary",
                        "--out", str(tmp_path / "s.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'trinary'" in err and "'ternary'" in err and "Traceback" not in err


@shipped
def test_distill_tokens_budget_and_scales_only(tmp_path, capsys):
    from bitmos.model.checkpoint import load_checkpoint
    out = tmp_path / "s.safetensors"
    assert main(["distill", "--teacher", str(shipped_path("teacher")), "--scheme", "onebit", "--tokens", "300",
                 "--batch-size", "2", "--seq-len", "64", "--train", "scales", "--eval-tokens", "256",
                 "--warmup", "1", "--no-progress", "--out", str(out)]) == 0
    _, meta = load_checkpoint(out)
    assert meta["step"] == 3 and meta["train_args"]["train_only"] == "scales"   # ceil(300 / 128) steps
    capsys.readouterr()
    assert main(["distill", "--teacher", str(shipped_path("teacher")), "--tokens", "300", "--steps", "2",
                 "--out", str(tmp_path / "t.safetensors")]) == 2
    assert main(["distill", "--teacher", str(shipped_path("teacher")), "--scheme", "sign", "--train", "scales",
                 "--steps", "1", "--no-progress", "--out", str(tmp_path / "u.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "give --tokens or --steps, not both" in err[0]
    assert "scheme 'sign' has no learnable scales" in err[1] and "Traceback" not in "".join(err)
