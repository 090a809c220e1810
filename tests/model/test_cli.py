import json

import pytest

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
