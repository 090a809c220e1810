"""benchmarks/bench_published.py: the Slim-Llama comparison's config and bounds derived independently here."""

import json

from .bench_helpers import load_benchmark


def _bench():
    return load_benchmark("bench_published")


def test_slim_llama_row_is_at_its_bandwidth_and_model_size(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert _bench().main(["--json", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    cfg = r["bitmos"]["config"]
    # 1.6 GB/s at 200 MHz is 64 bits a cycle
    assert cfg["ext_bw_bits"] * cfg["clock_mhz"] * 1e6 / 8 == 1.6e9 and cfg["vector_unit"] == 1
    # BitNet b1.58 3B: 26 layers of 4 x 3200^2 + 3 x 3200 x 8640 ternary weights, two planes (bits) each
    weights = 26 * (4 * 3200 * 3200 + 3 * 3200 * 8640)
    assert r["bitmos"]["binary_weights"] == weights and r["bitmos"]["weight_bits"] == 2 * weights
    bound = 1.6e9 / (2 * weights / 8)
    assert abs(r["bitmos"]["weights_only_bound_tokens_per_s"] - bound) < 1e-9 * bound
    assert r["bitmos"]["tokens_per_s"] < r["bitmos"]["bound_tokens_per_s"] < bound
    assert abs(r["published"]["tokens_per_s"] - 1 / 0.489) < 1e-12
    assert abs(r["published"]["chip_mj_per_token"] - 82.07e-3 * 0.489 * 1e3) < 1e-9
    assert f"{r['bitmos']['tokens_per_s']:.2f} (bound" in printed and "not compared: model size" in printed
    # head_dim 100: its halves of 50 are no whole number of medium's 8 lanes, so rotary stays on the host
    assert r["bitmos"]["host_ops"] == ["attention", "rotary"]
