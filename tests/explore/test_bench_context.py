"""benchmarks/bench_context.py: decode over context with attention simulated, its bound derived here."""

from .bench_helpers import load_benchmark


def test_rows_are_below_their_bound_and_attention_is_simulated_whole_or_tiled(capsys):
    bench = load_benchmark("bench_context")
    rows = bench.measure([128, 32768])
    by = {(r["model"], r["context"]): r for r in rows}
    llama = by[("llama-2-7b", 128)]
    # LLaMA-2-7B at asic32's 128 GB/s: weights 6.48 G x 1 bit; the KV cache 32 layers x 2 x 32 heads x 129 bytes
    weights = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    kv = 32 * 2 * 32 * 129 * 128
    assert abs(llama["bound_tokens_per_s"] - 128e9 / (weights / 8 + kv)) < 1e-6 * llama["bound_tokens_per_s"]
    assert llama["attention"] == "simulated" and 0.5 < llama["ratio"] < 1
    assert set(llama["cycles"]) == {"linears", "vector_unit", "attention"}
    # 32k positions of a 128-wide head: 8.4 MB of cache per kv head, beyond asic32's 4 MiB WBUF: read tile by
    # tile, every byte once (32 layers x 32 kv heads x 2 halves x 32,768 x 129 bytes, the new rows' pages besides)
    long = by[("llama-2-7b", 32768)]
    assert long["attention"] == "simulated, tiled" and 0.5 < long["ratio"] < 1
    assert 32 * 32 * 2 * 32768 * 129 <= long["kv_mb_read"] * 1e6 <= 1.001 * 32 * 32 * 2 * 32768 * 129
    assert by[("bitnet-b1.58-2b", 128)]["attention"] == "simulated"
    assert all(r["tokens_per_s"] < r["bound_tokens_per_s"] for r in rows)


def test_a_dma_queue_reads_the_same_bytes_in_fewer_cycles():
    bench = load_benchmark("bench_context")
    rows = bench.measure([2048], dma_queues=(1, 8))
    assert [(r["model"], r["dma_queue"]) for r in rows] == [("llama-2-7b", 1), ("llama-2-7b", 8),
                                                            ("bitnet-b1.58-2b", 1), ("bitnet-b1.58-2b", 8)]
    for one, eight in (rows[0:2], rows[2:4]):
        assert (eight["ext_mb_per_token"], eight["kv_mb_read"]) == (one["ext_mb_per_token"], one["kv_mb_read"])
        assert eight["bound_tokens_per_s"] == one["bound_tokens_per_s"]
        assert one["tokens_per_s"] < eight["tokens_per_s"] < eight["bound_tokens_per_s"]
