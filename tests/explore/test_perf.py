"""explore.perf: a model whose layers the config's buffers cannot hold is refused naming the presets that can."""

import pytest

from bitmos.config import preset_config
from bitmos.errors import UnsupportedError
from bitmos.explore.perf import estimate, presets_holding

# SmolLM2-135M's shapes (hidden 576, intermediate 1536, 9 / 3 heads of 64): K = 576 needs 288 SBUF lines on small
SMOL = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
        "num_hidden_layers": 1, "vocab_size": 49152, "head_dim": 64, "name": "smol-1-layer"}


def test_presets_holding_a_real_layer():
    walk = [("q", 576, 576, 0), ("down", 1536, 576, 0)]
    got = presets_holding(walk)
    assert "small" not in got and "tiny" not in got and {"medium", "asic32"} <= set(got)
    assert set(presets_holding([("toy", 128, 128, 0)])) >= {"tiny", "small", "medium", "asic32"}


def test_estimate_refusal_names_the_presets_that_fit():
    with pytest.raises(UnsupportedError, match=r"SBUF has 256; the presets whose buffers hold every layer of this "
                                               r"model: .*medium") as exc:
        estimate(SMOL, preset_config("small"), prefill=0, decode=1)
    assert exc.value.field == "sbuf_kib"
    assert estimate(SMOL, preset_config("medium"), prefill=0, decode=1)["decode"]["tokens"] == 1


# ---- decode at a context: the simulated linears plus the KV cache at the memory bound ---------------------------

def _toy_decode():
    return estimate("toy", preset_config("asic32"), prefill=0, decode=3)


def test_decode_at_context_adds_the_kv_cache_traffic_at_the_bandwidth():
    from bitmos.compiler.shapes import kv_cache_bytes, load_shape
    from bitmos.explore.perf import decode_at_context
    from bitmos.sim.energy import EnergyTable

    est = _toy_decode()
    cfg, table = preset_config("asic32"), EnergyTable.load(est["energy_table"])
    per = kv_cache_bytes(load_shape("toy"))
    # toy: 2 layers x 4 kv heads x (64 int8 mantissas + 1 exponent) x K and V
    assert per == 2 * 2 * 4 * (64 + 1)
    lin_cycles = est["decode"]["cycles"] / 3
    hz = cfg.clock_mhz * 1e6
    for context in (1, 7, 1000):
        c = decode_at_context(est, "toy", context)
        kv = c["components"]["kv_cache"]
        assert (c["kv_read_bytes"], c["kv_write_bytes"]) == (per * context, per)
        assert kv["cycles"] == -(-per * (context + 1) * 8 // cfg.ext_bw_bits)
        dram = per * 8 * (context * table["dram.read_pj_per_bit"] + table["dram.write_pj_per_bit"])
        assert dram * 1e-12 < kv["energy_j"] < dram * 1.01e-12       # the DRAM bits plus those cycles' leakage
        ext = (est["decode"]["ext_bytes_read"] + est["decode"]["ext_bytes_written"]) / 3
        assert c["components"]["linears"] == {"cycles": lin_cycles, "energy_j": est["decode"]["energy_per_token_j"],
                                              "ext_bytes": ext}
        assert c["ext_bytes_per_token"] == ext + per * (context + 1)
        assert c["cycles"] == lin_cycles + kv["cycles"]
        assert c["tokens_per_s"] == pytest.approx(hz / c["cycles"])
        weight_bytes = est["model"]["weight_bits"] / 8
        assert c["bound_tokens_per_s"] == pytest.approx(hz * cfg.ext_bw_bits / 8 / (weight_bytes + per * context))
        assert c["tokens_per_s"] < c["bound_tokens_per_s"]


def test_context_sweep_keeps_what_fits_the_external_memory():
    from bitmos.errors import ConfigError
    from bitmos.explore.perf import context_sweep, decode_at_context

    est = _toy_decode()
    cap = preset_config("asic32").ext_mem_bytes
    per = decode_at_context(est, "toy", 1)["kv_bytes_per_position"]
    too_long = cap // per + 1
    with pytest.raises(ConfigError, match="exceed the external memory") as exc:
        decode_at_context(est, "toy", too_long)
    assert exc.value.field == "ext_mem_mib"
    sweep = context_sweep(est, "toy", (16, 4096, too_long))
    assert [r["context"] for r in sweep] == [16, 4096]
    assert sweep[0]["tokens_per_s"] > sweep[1]["tokens_per_s"]
    assert sweep[0]["energy_per_token_j"] < sweep[1]["energy_per_token_j"]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="--context must be"):
            decode_at_context(est, "toy", bad)
    no_decode = estimate("toy", preset_config("asic32"), prefill=4, decode=0)
    with pytest.raises(ConfigError, match="needs a decode phase"):
        decode_at_context(no_decode, "toy", 16)


def test_a_vector_unit_config_simulates_every_layer_op():
    """With vector_unit = 1 every residual add, RMSNorm, rotary embedding, SwiGLU and attention of the shape is
    compiled and simulated too: the phase gets a ``components`` split whose parts add up to it, and
    decode_at_context carries the parts, its attention simulated at the context asked for."""
    import dataclasses

    from bitmos.compiler.shapes import load_shape, vector_ops
    from bitmos.explore.perf import decode_at_context

    cfg = preset_config("asic32")
    shape = load_shape("toy")
    ops = vector_ops(shape)
    n = shape.get("n_layers") or shape.get("num_hidden_layers")
    assert [op for _, op, _ in ops].count("rmsnorm") == 2 * n + 1 and len(ops) == 7 * n + 1
    assert [op for _, op, _ in ops].count("rope") == 2 * n
    bitnet = vector_ops(shape, layernorms=True)     # BitNet: each linear's LayerNorm, its SwiGLU on the host
    assert [op for _, op, _ in bitnet].count("layernorm") == 7 * n and "silu" not in {op for _, op, _ in bitnet}
    plain = estimate("toy", cfg, prefill=5, decode=3)
    est = estimate("toy", dataclasses.replace(cfg, vector_unit=1), prefill=5, decode=3)
    assert "components" not in plain["decode"]
    for phase in ("prefill", "decode"):
        comp = est[phase]["components"]
        assert list(comp) == ["linears", "vector_unit", "attention"]
        assert all(c["cycles"] > 0 and c["energy_j"] > 0 for c in comp.values())
        assert comp["linears"]["cycles"] == plain[phase]["cycles"]
        assert sum(c["cycles"] for c in comp.values()) == est[phase]["cycles"]
        assert sum(c["energy_j"] for c in comp.values()) == pytest.approx(est[phase]["energy_j"])
    assert est["decode"]["attention_position"] == 5 + 3 // 2 and est["host_ops"] == []
    ctx = decode_at_context(est, "toy", 64)
    assert list(ctx["components"]) == ["linears", "vector_unit", "attention"] and ctx["attention_simulated"]
    assert ctx["components"]["vector_unit"]["cycles"] == est["decode"]["components"]["vector_unit"]["cycles"] / 3
    assert ctx["cycles"] == pytest.approx(sum(c["cycles"] for c in ctx["components"].values()))
    assert decode_at_context(plain, "toy", 64)["tokens_per_s"] > ctx["tokens_per_s"]
    # the attention's external traffic is the KV cache's: the pages of 64 positions read, the new rows written
    longer = decode_at_context(est, "toy", 640)
    assert longer["components"]["attention"]["cycles"] > ctx["components"]["attention"]["cycles"]
    assert ctx["kv_bytes_per_position"] * 64 <= ctx["kv_read_bytes"] <= ctx["kv_bytes_per_position"] * 64 * 1.1


def test_attention_beyond_what_wbuf_holds_is_tiled_and_beyond_obuf_falls_back_to_the_memory_bound():
    import dataclasses

    from bitmos.explore.perf import decode_at_context

    # WBUF of 64 KiB: a kv head's cache of 4,096 positions is read tile by tile, every byte of it once
    cfg = dataclasses.replace(preset_config("asic32"), vector_unit=1, wbuf_kib=64)
    ctx = decode_at_context(estimate("toy", cfg, prefill=4, decode=2), "toy", 4096)
    assert ctx["attention_simulated"] and list(ctx["components"]) == ["linears", "vector_unit", "attention"]
    assert ctx["kv_read_bytes"] == ctx["kv_bytes_per_position"] * 4096
    # OBUF of 16 KiB cannot keep one query head's 4,096 scores: the memory-bound stand-in, the refusal kept
    cfg = dataclasses.replace(cfg, obuf_kib=16)
    ctx = decode_at_context(estimate("toy", cfg, prefill=4, decode=2), "toy", 4096)
    assert not ctx["attention_simulated"] and "OBUF (144 lines needed for one query head's scores" in ctx["attention_refused"]
    assert list(ctx["components"]) == ["linears", "vector_unit", "kv_cache"]
    assert ctx["kv_read_bytes"] == ctx["kv_bytes_per_position"] * 4096


def test_the_host_lm_head_is_reported_where_the_shape_names_its_vocabulary():
    from bitmos.explore.perf import decode_at_context

    cfg = preset_config("asic32")
    c = decode_at_context(estimate("tinyllama-1.1b", cfg, prefill=0, decode=1), "tinyllama-1.1b", 128)
    assert c["host"] == {"vocab_size": 32000, "lm_head_bytes": 2 * 32000 * 2048, "lm_head_macs": 32000 * 2048}
    assert decode_at_context(_toy_decode(), "toy", 128)["host"] is None      # a synthetic shape names none
