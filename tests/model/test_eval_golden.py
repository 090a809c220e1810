"""`bitmos eval --golden`: the integer golden model's figures beside the float student's."""

import json

import pytest

from bitmos.app.cli import main
from bitmos.model.checkpoint import shipped_path


@pytest.mark.skipif(not shipped_path("student").exists(), reason="no shipped student")
def test_eval_golden_reports_both(capsys):
    assert main(["eval", str(shipped_path("student")), "--golden", "--max-tokens", "1024", "--threads", "1",
                 "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    g = row["golden"]
    assert g["tokens"] == row["tokens"]
    assert abs(g["ppl"] / row["ppl"] - 1) < 0.01          # issue 5 target: within 1 %
    assert g["ppl_rel_diff"] == pytest.approx(g["ppl"] / row["ppl"] - 1)
    assert g["accelerator"] == "small"


@pytest.mark.skipif(not shipped_path("student-ternary").exists(), reason="no shipped ternary student")
def test_eval_golden_whole_layer_by_shipped_name(capsys):
    # a shipped checkpoint by name; every decoder-layer op in integers; each layer's input format calibrated
    assert main(["eval", "student-ternary", "--golden", "--golden-scope", "layer", "--calibrate", "1024",
                 "--max-tokens", "1024", "--threads", "1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    g = row["golden"]
    assert row["scheme"] == "ternary" and g["scope"] == "layer"
    assert g["residual"]["values"] > 0 and g["residual"]["saturated"] == 0
    assert abs(g["ppl_rel_diff"]) < 0.01
    assert main(["eval", "student", "--golden", "--golden-scope", "layer", "--max-tokens", "512",
                 "--threads", "1"]) == 0
    assert "(integer golden, layer)" in capsys.readouterr().out
