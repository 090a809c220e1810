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
