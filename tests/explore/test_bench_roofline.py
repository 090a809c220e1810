"""benchmarks/bench_roofline.py: each figure against a bound derived independently here (bandwidth over the weight
bytes a token reads; weight bits at the table's DRAM read energy), and its ratio as printed."""

import json

from .bench_helpers import load_benchmark


def _bench():
    return load_benchmark("bench_roofline")


def test_bounds_and_ratios_of_llama7b_bitnet2b_and_the_student(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert _bench().main(["--prefill", "64", "--decode", "2", "--student-prefill", "16", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [(r["model"], r["config"]) for r in rows] == [
        ("llama-2-7b", "asic32"), ("llama-2-7b", "asic32 + dma_queue 8"), ("bitnet-b1.58-2b", "asic32"),
        ("bitnet-b1.58-2b", "asic32 + dma_queue 8"), ("shipped student", "small")]
    # the queue overlaps the transfers' latencies: the same bytes, a faster decode
    for a, b in (rows[0:2], rows[2:4]):
        assert b["decode_ext_bytes_per_token"] == a["decode_ext_bytes_per_token"]
        assert b["decode_tokens_per_s"] > a["decode_tokens_per_s"]
    for r in rows:
        # LLaMA-2-7B: 32 layers of 4 x 4096^2 + 3 x 4096 x 11008 sign weights, one bit each
        if r["model"] == "llama-2-7b":
            assert r["weight_bytes"] == 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) / 8
            assert r["bandwidth_bytes_per_s"] == 1024 / 8 * 1e9
            assert r["dram_read_pj_per_bit"] == 3.9
            assert r["kv_bytes_per_context_token"] == 32 * 2 * 32 * (128 + 1)
        # BitNet b1.58 2B: q/o 2560^2, k/v 2560 x 640 (5 kv heads of 128), 3 x 2560 x 6912; two planes per trit
        if r["model"] == "bitnet-b1.58-2b":
            assert r["weight_bytes"] == 30 * (2 * 2560 * 2560 + 2 * 2560 * 640 + 3 * 2560 * 6912) * 2 / 8
            # the bound with the KV cache at 2,048 tokens of context, as printed
            kv = 2048 * r["kv_bytes_per_context_token"]
            assert f"{r['bandwidth_bytes_per_s'] / (r['weight_bytes'] + kv):,.1f}" in printed
        assert abs(r["decode_bound_tokens_per_s"] - r["bandwidth_bytes_per_s"] / r["weight_bytes"]) < 1e-6 * r[
            "decode_bound_tokens_per_s"]
        assert abs(r["dram_floor_mj_per_token"] - r["weight_bytes"] * 8 * r["dram_read_pj_per_bit"] * 1e-9) < 1e-9
        # below the bound and above the floor: a token reads more than its weights and spends more than DRAM
        assert 0 < r["decode_tokens_per_s"] < r["decode_bound_tokens_per_s"]
        assert r["decode_mj_per_token"] > r["dram_floor_mj_per_token"]
        assert r["decode_ext_bytes_per_token"] > r["weight_bytes"]
        assert 0 < r["prefill_utilization"] <= 1
        ratio = f"{r['decode_tokens_per_s'] / r['decode_bound_tokens_per_s']:.3f}"
        assert f"| {r['model']} on {r['config']} | " in printed and ratio in printed
