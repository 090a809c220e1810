"""benchmarks/bench_real.py on the shipped tiny teacher and the built-in corpus (seconds): the rows, greedy
agreement, the distilled row, --append, the doc markers and one-line errors. The real run (SmolLM2-135M on the KJV
text) is in docs/model.md."""

import importlib.util
import json
from pathlib import Path

import pytest

from bitmos.model.checkpoint import shipped_path

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not shipped_path("teacher").exists(), reason="no shipped teacher")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_real", ROOT / "benchmarks" / "bench_real.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _argv(tmp_path, *extra):
    return ["--teacher", str(shipped_path("teacher")), "--corpus", "builtin", "--seq-len", "64", "--eval-tokens",
            "512", "--distill-seq-len", "32", "--distill-tokens", "128", "--threads", "1",
            "--work", str(tmp_path / "work"), *extra]


def test_rows_agreement_distilled_row_and_doc_block(tmp_path, capsys):
    bench = _bench()
    doc = tmp_path / "model.md"
    doc.write_text("# doc\n\nbefore\n\n<!-- bench_real:begin -->\nold table\n<!-- bench_real:end -->\n\nafter\n")
    out = tmp_path / "rows.json"
    assert bench.main(_argv(tmp_path, "--schemes", "sign,onebit,mos", "--json", str(out), "--doc", str(doc))) == 0
    data = json.loads(out.read_text())
    runs = [r["run"] for r in data["rows"]]
    best = min(data["rows"][2:4], key=lambda r: r["ppl"])          # the lowest ppl --train scales can train
    assert runs == ["teacher", "sign", "onebit", "mos E=4", f"{best['run']} + distill"]
    teacher, *students = data["rows"]
    assert teacher["agree"] == 1.0 and teacher["tokens"] == 512 == data["setup"]["windows"] * 64
    assert all(0 <= r["agree"] <= 1 and r["ppl"] > teacher["ppl"] for r in students)
    assert students[-1]["trained_tokens"] == 128 and students[-1]["train"] == "scales"
    text = doc.read_text()
    assert "old table" not in text and text.startswith("# doc\n\nbefore\n") and text.endswith("after\n")
    label = f"{best['run']} + distill (scales)"
    assert f"| {label} | 128 |" in text and f"`{label}`: 128 training tokens (2 steps of 2 x 32)" in text

    more = tmp_path / "more.json"
    assert bench.main(_argv(tmp_path, "--schemes", "mos", "--distill", "mos", "--hidden-weight", "10",
                            "--append", str(out), "--json", str(more), "--doc", "")) == 0
    rows = json.loads(more.read_text())["rows"]
    assert [r["run"] for r in rows][:5] == runs and rows[-1]["hidden_weight"] == 10
    assert "| mos E=4 + distill (scales, hidden 10) | 128 |" in capsys.readouterr().out


def test_user_errors_are_one_line(tmp_path, capsys):
    bench = _bench()
    assert bench.main(_argv(tmp_path, "--schemes", "sign,binary", "--doc", "")) == 2
    assert bench.main(_argv(tmp_path, "--distill-tokens", "0", "--doc", "")) == 2
    assert bench.main(_argv(tmp_path, "--schemes", "sign", "--doc", "")) == 2      # nothing --train scales can train
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bench_real: error: --schemes: unknown binary (choose from sign, fbi, onebit, bitnet, pb, mos, "
                   "ternary)",
                   "bench_real: error: --distill-tokens: positive token counts, comma separated; got '0'",
                   "bench_real: error: --distill best: none of sign can be trained with --train scales"]
