"""``bitmos estimate`` with huge ``--prefill`` / ``--decode`` (issue 22): decode steps are summed, not
replayed, so any count up to the limit answers in seconds; a prefill beyond the work budget, or a decode
beyond its limit, is refused up front in one line naming the limit."""

from __future__ import annotations

import json
import time

import pytest

from .test_cli_errors import fails_cleanly, run


def test_summarize_repeat_is_the_replayed_list():
    from bitmos.compiler import compile_spec, synthetic_spec
    from bitmos.config import preset_config
    from bitmos.sim import Simulator
    from bitmos.sim.energy import EnergyTable, default_table
    from bitmos.sim.report import summarize

    cfg = preset_config("small")
    spec = synthetic_spec("l", 64, 32, cfg, seed=0, materialize=False)
    runs = [Simulator(cfg).run(p.words, None, functional=False) for p in compile_spec(spec, cfg, 1).programs] * 2
    table = EnergyTable.load(default_table(cfg))
    a = summarize(runs * 7, table, tokens=7)
    b = summarize(runs, table, tokens=7, repeat=7)
    a.pop("per_run", None)
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float):
            assert b[k] == pytest.approx(a[k], rel=1e-12), k
        elif isinstance(a[k], dict):
            assert b[k] == pytest.approx(a[k], rel=1e-12), k
        else:
            assert a[k] == b[k], k


def test_a_trillion_decode_tokens_answer_in_seconds(capsys):
    t0 = time.perf_counter()
    rc, out, err = run(["estimate", "--model", "toy", "--config", "asic32", "--prefill", "4",
                        "--decode", str(10 ** 12), "--json"], capsys)
    assert rc == 0, err
    assert time.perf_counter() - t0 < 30
    big = json.loads(out)
    rc, out, err = run(["estimate", "--model", "toy", "--config", "asic32", "--prefill", "4", "--decode", "1",
                        "--json"], capsys)
    one = json.loads(out)
    assert big["decode"]["tokens"] == 10 ** 12
    assert big["decode"]["cycles"] == one["decode"]["cycles"] * 10 ** 12
    assert big["decode"]["tokens_per_s"] == pytest.approx(one["decode"]["tokens_per_s"])


@pytest.mark.parametrize("argv, match", [
    (["--model", "toy", "--prefill", "4", "--decode", str(10 ** 12 + 1)], "beyond the limit of 1,000,000,000,000"),
    (["--prefill", str(10 ** 12), "--decode", "1"], "beyond the external memory"),   # the first reason
    (["--prefill", "65536", "--decode", "1"], "beyond the limit of 16,777,216 (--max-work"),
    (["--model", "toy", "--prefill", "200000", "--decode", "1", "--max-work", "1000"], "beyond the limit of 1,000"),
    (["--max-work", "-1"], "--max-work: must be at least 0"),
])
def test_huge_sizes_are_refused_up_front(capsys, argv, match):
    t0 = time.perf_counter()
    fails_cleanly(["estimate", *argv], capsys, match=match)
    assert time.perf_counter() - t0 < 20


def test_scheme_sets_the_weight_format(capsys):
    """--scheme ternary: twice the weight bits a decode token reads, so half the memory-bound limit and more
    cycles than the same model in sign weights; a chip without integer weight planes refuses it in one line."""
    base = ["estimate", "--model", "toy", "--config", "asic32", "--prefill", "4", "--decode", "2", "--json"]
    rc, out, err = run(base + ["--scheme", "mos"], capsys)
    assert rc == 0, err
    sign = json.loads(out)
    rc, out, err = run(base + ["--scheme", "ternary"], capsys)
    assert rc == 0, err
    tern = json.loads(out)
    assert tern["model"]["weight_bits"] == 2 * sign["model"]["weight_bits"] == 2 * sign["model"]["binary_weights"]
    assert tern["decode_bound_tokens_per_s"] == pytest.approx(sign["decode_bound_tokens_per_s"] / 2)
    assert tern["decode"]["cycles"] > sign["decode"]["cycles"] and tern["prefill"]["cycles"] > sign["prefill"]["cycles"]
    assert tern["decode"]["ext_bytes_read"] > sign["decode"]["ext_bytes_read"]
    fails_cleanly(["estimate", "--model", "toy", "--config", "tiny", "--prefill", "4", "--decode", "2",
                   "--scheme", "ternary"], capsys, match="weight_bits = 1")
    fails_cleanly(["estimate", "--scheme", "float"], capsys, match="--scheme")


def test_scheme_pb_is_two_chip_layers_per_linear(capsys, tmp_path):
    """--scheme pb: every linear a sign layer and an int8 layer (8 planes on round(0.25 K) channels at
    --pb-fraction 0.25), so 1 + 7 x 0.25 weight bits per weight; a chip without 8-bit planes refuses it naming the
    preset that has them."""
    base = ["estimate", "--model", "toy", "--prefill", "4", "--decode", "2", "--json"]
    w8 = tmp_path / "asic32-w8.toml"
    w8.write_text('name = "asic32-w8"\nweight_bits = 8\nacc_bits = 32\npreset = "asic32"\n')
    rc, out, err = run(base + ["--config", str(w8), "--scheme", "sign"], capsys)
    assert rc == 0, err
    sign = json.loads(out)
    rc, out, err = run(base + ["--config", str(w8), "--scheme", "pb", "--pb-fraction", "0.25"], capsys)
    assert rc == 0, err
    pb = json.loads(out)
    assert pb["model"]["layers"] == 2 * sign["model"]["layers"] and pb["model"]["w_bits"] == 8
    ratio = pb["model"]["weight_bits"] / sign["model"]["weight_bits"]
    assert 1 + 7 * 0.24 < ratio < 1 + 7 * 0.26 + 0.05   # plus the pads' few bits
    assert pb["decode"]["cycles"] > sign["decode"]["cycles"]
    fails_cleanly(base + ["--config", "asic32", "--scheme", "pb"], capsys,
                  match="weight_bits >= 8 (the preset small-w8")
    fails_cleanly(base + ["--scheme", "pb", "--pb-fraction", "1.5"], capsys, match="--pb-fraction")


def test_context_adds_the_kv_cache_and_its_plot(capsys, tmp_path):
    """--context N: one decode token at a context of N (the linears simulated, the KV cache at the memory bound),
    a sweep over 128..32k plus N in the JSON and the plot; refusals in one line."""
    base = ["estimate", "--model", "toy", "--config", "asic32", "--prefill", "4", "--decode", "2"]
    rc, out, err = run(base + ["--context", "300", "--json"], capsys)
    assert rc == 0, err
    est = json.loads(out)
    c = est["context"]
    assert c["context"] == 300 and set(c["components"]) == {"linears", "kv_cache"}
    assert c["tokens_per_s"] < est["decode"]["tokens_per_s"]       # the KV cache's traffic is added
    assert [r["context"] for r in est["context_sweep"]] == sorted({128, 256, 300, 512, 1024, 2048, 4096, 8192,
                                                                    16384, 32768})
    rc, out, err = run(base + ["--context", "300", "--plots", tmp_path / "plots"], capsys)
    assert rc == 0, err
    assert "one decode token at a context of 300 tokens" in out and "KV cache reads + write (memory bound)" in out
    assert (tmp_path / "plots" / "context.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "plots" / "estimate.json").read_text())["context"] == c
    fails_cleanly(base + ["--context", "0"], capsys, match="--context: must be at least 1")
    fails_cleanly(["estimate", "--model", "toy", "--config", "asic32", "--prefill", "4", "--decode", "0",
                   "--context", "16"], capsys, match="--context needs a decode phase")
    fails_cleanly(base + ["--context", str(10 ** 9)], capsys, match="exceed the external memory")


def test_context_with_the_vector_unit_names_its_component(capsys, tmp_path):
    cfg = tmp_path / "asic32v.toml"
    cfg.write_text('vector_unit = 1\npreset = "asic32"\n')
    base = ["estimate", "--model", "toy", "--config", str(cfg), "--prefill", "4", "--decode", "2", "--context", "300"]
    rc, out, err = run(base + ["--plots", tmp_path / "plots"], capsys)
    assert rc == 0, err
    assert "norms, rotary, SwiGLU, residual adds (sim.)" in out and "attention + KV cache (simulated)" in out
    rest = out.split("not counted")[1]
    assert "attention" not in rest and "SiLU" not in rest and "rotary" not in rest and "embedding, LM head" in rest
    assert (tmp_path / "plots" / "context.png").stat().st_size > 10_000
