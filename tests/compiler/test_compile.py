"""compile_linear: programs that execute to exactly the golden integer outputs, on every preset and on
configs whose buffers barely fit; clear errors for everything else."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bitmos.config import AcceleratorConfig, preset_config
from bitmos.errors import UnsupportedError
from bitmos.export import BinaryLinearExport
from bitmos.isa import Op, decode
from bitmos.compiler import compile_linear, make_tiling, read_layer_output, write_layer_input

from tests.compiler.helpers import golden, random_layer, run_programs, timeline_cycles

PRESETS = ("tiny", "small", "medium", "asic32")


def check_layer(lin, cfg, T, rng, *, x=None):
    cl = compile_linear(lin, cfg, T)
    mem = bytearray(cl.memory)
    if x is None:
        x = rng.integers(-4000, 4000, (T, lin.d_in)).astype(np.int16)
    write_layer_input(mem, cl.manifest, x)
    mem, cycles = run_programs(cfg, cl.programs, mem)
    y = read_layer_output(mem, cl.manifest)
    want = golden(lin, cfg, x)
    assert y.shape == want.shape
    np.testing.assert_array_equal(y, want)
    assert cycles == cl.cycles == cl.manifest["cycles"]
    for p in cl.programs:
        assert len(p.words) <= cfg.imem_words
        assert timeline_cycles(cfg, p.words, lin.d_in) == p.cycles
    return cl


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("K,N,T", [(70, 33, 1), (70, 33, 5), (16, 1, 1), (1, 7, 3), (40, 9, 9)])
def test_presets_exact(preset, K, N, T):
    cfg = preset_config(preset)
    rng = np.random.default_rng(K * 1000 + N * 10 + T)
    cl = check_layer(random_layer(rng, K, N, cfg.experts, cfg.act_bits), cfg, T, rng)
    assert cl.tiling.mode == ("plane" if T == 1 else "token") or T == 1


@pytest.mark.parametrize("preset", PRESETS)
def test_bitnet_compiles_exactly_as_a_sign_layer(preset):
    """A BitNet layer is a sign layer on the chip (its LayerNorm is the host's): golden == reference machine ==
    simulator, and the very programs and memory image of the same layer exported as sign."""
    cfg = preset_config(preset)
    rng = np.random.default_rng(11)
    lin = random_layer(rng, 70, 33, 0, cfg.act_bits, scheme="bitnet")
    cl = check_layer(lin, cfg, 3, rng)
    sign = compile_linear(dataclasses.replace(lin, scheme="sign"), cfg, 3)
    assert [p.words for p in cl.programs] == [p.words for p in sign.programs] and cl.memory == sign.memory


@pytest.mark.parametrize("preset", [p for p in PRESETS if preset_config(p).weight_bits >= 2])
@pytest.mark.parametrize("K,N,T", [(70, 33, 1), (70, 33, 5), (1, 7, 3)])
def test_ternary_exact_on_presets(preset, K, N, T):
    """Ternary layers (two weight planes under WBITS = 2): golden == reference machine == simulator, cycles
    exact; twice the weight bytes of the same shape with sign weights, and WBITS back to 0 at the end."""
    cfg = preset_config(preset)
    rng = np.random.default_rng(K * 7 + N + T)
    lin = random_layer(rng, K, N, 0, cfg.act_bits, scheme="ternary")
    cl = check_layer(lin, cfg, T, rng)
    sign = compile_linear(dataclasses.replace(lin, scheme="sign", nonzero=None), cfg, T)
    assert cl.sizes["weights"] == 2 * sign.sizes["weights"]
    assert cl.manifest["registers"]["WBITS"] == 2 and "WBITS" not in sign.manifest["registers"]
    for p in cl.programs:
        setr_w = [i for i, w in enumerate(p.words) if w >> 58 == 2 and (w >> 52) & 0x3F == 7]
        assert [p.words[i] & 0xFFFFFFFF for i in setr_w] == [2, 0]


@pytest.mark.parametrize("preset", [p for p in PRESETS if preset_config(p).experts >= 2])
@pytest.mark.parametrize("K,N,T", [(70, 33, 1), (70, 33, 5), (1, 7, 3)])
def test_fbi_exact_on_presets(preset, K, N, T):
    """FBI-LLM layers (alpha as s_in, beta . x from router row 0 under BIAS = 1, added at scaleout): golden ==
    reference machine == simulator, cycles exact; BIAS set once and back to 0 at the end of every program."""
    cfg = preset_config(preset)
    rng = np.random.default_rng(K * 5 + N + T)
    lin = random_layer(rng, K, N, 1, cfg.act_bits, scheme="fbi")
    cl = check_layer(lin, cfg, T, rng)
    assert cl.manifest["registers"]["BIAS"] == 1
    for p in cl.programs:
        setr_b = [i for i, w in enumerate(p.words) if w >> 58 == 2 and (w >> 52) & 0x3F == 8]
        assert [p.words[i] & 0xFFFFFFFF for i in setr_b] == [1, 0]
    # the bias is really in the outputs: the same layer without it differs by beta . x on every output
    plain = dataclasses.replace(lin, scheme="onebit", bias=None)
    x = rng.integers(-4000, 4000, (T, K)).astype(np.int16)
    with_bias, without = golden(lin, cfg, x), golden(plain, cfg, x)
    shift = cfg.x_frac_bits + lin.bias_exp - cfg.out_frac_bits
    beta_x = (x.astype(np.int64) @ lin.bias.astype(np.int64) + (1 << (shift - 1))) >> shift
    np.testing.assert_array_equal(with_bias - without, np.broadcast_to(beta_x[:, None], with_bias.shape))


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_per_layer_input_format_exact(preset):
    """A layer with its own calibrated input format (x_frac): only RSHIFT/OSHIFT change, and the program still
    computes exactly the golden outputs (the reference golden reads x in that format)."""
    cfg = preset_config(preset)
    rng = np.random.default_rng(21)
    lin = random_layer(rng, 70, 33, cfg.experts, cfg.act_bits)
    base = compile_linear(lin, cfg, 3).spec
    lin.x_frac = cfg.x_frac_bits + 3
    cl = check_layer(lin, cfg, 3, rng)
    assert cl.spec.oshift == base.oshift + 3 and (cfg.experts < 2 or cl.spec.rshift == base.rshift + 3)


def test_fbi_needs_a_router():
    rng = np.random.default_rng(13)
    lin = random_layer(rng, 8, 4, 1, 4, scheme="fbi")
    with pytest.raises(UnsupportedError, match=r"beta \. x runs on the router.*experts = 1"):
        compile_linear(lin, _cfg(experts=1), 1)


def test_a_bias_layer_never_reuses_the_schedule_of_its_shape_without_one():
    # the schedule cache is keyed on what the program depends on: a sign layer of the same shape compiled first
    # must not hand an FBI layer a program without its setr BIAS
    from bitmos.compiler import compile_spec, synthetic_spec
    from bitmos.isa import decode
    cfg = preset_config("small")
    for bias in (False, True, False):
        spec = synthetic_spec("x", 96, 40, cfg, seed=0, materialize=False, bias=bias)
        setr = [str(decode(w)) for p in compile_spec(spec, cfg, 1).programs for w in p.words
                if str(decode(w)).startswith("setr BIAS")]
        assert setr == (["setr BIAS 1", "setr BIAS 0"] if bias else [])


def test_synthetic_fbi_layer_needs_a_router():
    from bitmos.compiler import synthetic_spec
    with pytest.raises(UnsupportedError, match=r"beta \. x runs on the router.*experts = 0"):
        synthetic_spec("x", 8, 4, _cfg(experts=0), seed=0, materialize=False, bias=True)


def test_ternary_streamed_weights_and_token_blocks():
    """Small buffers: weight planes streamed through both WBUF slots, several token blocks."""
    cfg = _cfg(weight_bits=2, experts=0, wbuf_kib=1, obuf_kib=1)
    rng = np.random.default_rng(11)
    for K, N, T in ((96, 40, 6), (33, 9, 1), (200, 12, 3)):
        check_layer(random_layer(rng, K, N, 0, 4, scheme="ternary"), cfg, T, rng)


def test_ternary_needs_weight_planes():
    rng = np.random.default_rng(12)
    lin = random_layer(rng, 8, 4, 0, 4, scheme="ternary")
    with pytest.raises(UnsupportedError, match=r"2-bit integer weights \(ternary\).*weight_bits = 1"):
        compile_linear(lin, _cfg(experts=0), 1)


def _pb_salient_part(rng, K, N, act_bits):
    """PB-LLM's int8 part as the exporter makes it: int8 codes over K - 1 salient channels and a zero-weight
    absmax pad, E = 1 with s_in = 1 (exponent 0) and per-row s_out."""
    codes = rng.integers(-127, 128, (N, K)).astype(np.int8)
    codes[:, -1] = 0
    return BinaryLinearExport("layers.0.mlp.up_proj.salient", K, N, 1, act_bits, codes >= 0, None, 0,
                              np.ones((1, K), np.int16), 0, rng.integers(100, 4000, (1, N)).astype(np.int16), 20,
                              scheme="pb", int_weights=codes, source="layers.0.mlp.up_proj",
                              channels=np.arange(K - 1, dtype=np.int32) * 3, absmax_pads=1)


@pytest.mark.parametrize("experts", [1, 2])
def test_pb_int8_part_exact(experts):
    """The int8 part (eight weight planes under WBITS = 8) on chips with 1 or 2 scale experts: golden ==
    reference machine == simulator, cycles exact, 8x the weight bytes of the same shape with sign weights,
    streamed through small buffers, in one token and in token blocks."""
    cfg = _cfg(weight_bits=8, acc_bits=32, experts=experts, wbuf_kib=2)
    rng = np.random.default_rng(21)
    for K, N, T in ((14, 24, 1), (40, 9, 5), (100, 12, 3)):
        lin = _pb_salient_part(rng, K, N, 4)
        cl = check_layer(lin, cfg, T, rng)
        assert cl.manifest["registers"]["WBITS"] == 8
        sign = compile_linear(dataclasses.replace(lin, int_weights=None, scheme="onebit", source="", channels=None,
                                                  absmax_pads=0), cfg, T)
        assert cl.sizes["weights"] == 8 * sign.sizes["weights"]


def test_pb_needs_an_int8_chip_and_a_wide_accumulator():
    rng = np.random.default_rng(22)
    lin = _pb_salient_part(rng, 14, 8, 4)
    with pytest.raises(UnsupportedError, match=r"8-bit integer weights \(PB-LLM's int8 salient part\) but the "
                                               r"accelerator has weight_bits = 2.*weight_bits = 8"):
        compile_linear(lin, _cfg(weight_bits=2), 1)
    with pytest.raises(UnsupportedError, match=r"experts = 1 but the accelerator has experts = 0"):   # per-row s_out
        compile_linear(lin, _cfg(weight_bits=8, acc_bits=32, experts=0), 1)
    # 4-bit activations x int8 codes: 8 x 128 per input, so K = 40 may reach 40,960 > 2^15 - 1 at acc_bits 16
    wide = _pb_salient_part(rng, 40, 8, 4)
    with pytest.raises(UnsupportedError, match=r"accumulator could overflow: K = 40"):
        compile_linear(wide, _cfg(weight_bits=8, acc_bits=16), 1)
    compile_linear(wide, _cfg(weight_bits=8, acc_bits=17), 1)


def test_decode_uses_plane_mode_when_faster():
    cfg = preset_config("small")
    rng = np.random.default_rng(0)
    lin = random_layer(rng, 128, 64, cfg.experts, cfg.act_bits)
    cl = compile_linear(lin, cfg, 1)
    assert cl.tiling.mode == "plane"
    token = make_tiling(cl.spec, cfg, 1, "token")
    assert token.mode == "token"


def _cfg(**kw) -> AcceleratorConfig:
    base = dict(name="t", rows=2, cols=2, lanes=16, act_bits=4, experts=2, acc_bits=24, xbuf_kib=1, wbuf_kib=1,
                sbuf_kib=1, qbuf_kib=1, obuf_kib=1, meta_tokens=4, imem_words=4096, ext_bw_bits=32, ext_latency=4,
                ext_mem_mib=1)
    base.update(kw)
    return AcceleratorConfig(**base)


def test_streamed_weights_and_sout_and_token_blocks():
    # WBUF 256 lines of 32 bits: K=100 -> nch=7, 36 tiles per half; N=200 -> 100 tiles: weights stream.
    # SBUF 128 lines (E=2: 64 bit): router+S_in = 2*14 lines, S_out 100 lines > 100 left -> streamed.
    cfg = _cfg()
    rng = np.random.default_rng(1)
    lin = random_layer(rng, 100, 200, 2, 4)
    cl = check_layer(lin, cfg, 13, rng)
    til = cl.tiling
    assert not til.w_resident and til.nws >= 2
    assert not til.sout_resident
    assert til.ngroups > til.groups_per_block   # several token blocks (META holds 4 tokens)


@pytest.mark.parametrize("queue", [2, 8])
def test_a_dma_queue_is_exact_and_overlaps_the_decode_transfers(queue):
    # the streamed layer above with transfers queued (dma_queue): exact against golden and the naive machine under
    # the queue's hazard rule (check_layer); decode, where the DMA engine is the bottleneck, takes fewer cycles
    rng = np.random.default_rng(1)
    lin = random_layer(rng, 100, 200, 2, 4)
    for T in (1, 13):
        one = check_layer(lin, _cfg(), T, rng)
        queued = check_layer(lin, _cfg(dma_queue=queue), T, rng)
        assert queued.cycles <= one.cycles, (T, queued.cycles, one.cycles)
        if T == 1:
            assert queued.cycles < one.cycles


def test_imem_split_into_several_programs():
    cfg = _cfg(imem_words=40)
    rng = np.random.default_rng(2)
    lin = random_layer(rng, 30, 40, 2, 4)
    cl = check_layer(lin, cfg, 9, rng)
    assert len(cl.programs) > 1
    assert [p["file"] for p in cl.manifest["programs"]][0].endswith(".p0.bmprog")


def test_imem_too_small_is_a_clear_error():
    cfg = _cfg(imem_words=16)
    rng = np.random.default_rng(3)
    with pytest.raises(UnsupportedError, match="imem_words = 16"):
        compile_linear(random_layer(rng, 30, 40, 2, 4), cfg, 3)


def test_buffers_that_barely_fit_and_one_line_less():
    # cols = 2: XBUF lines are 32 bits, 1 KiB = 256 lines; K = 512 features fill XBUF exactly.
    rng = np.random.default_rng(4)
    lin = random_layer(rng, 512, 5, 2, 4)
    cfg = _cfg(qbuf_kib=1, sbuf_kib=5, wbuf_kib=2)   # QBUF: 256 lines of 32 bits; nch*k = 32*4 = 128
    assert cfg.xlines(512) == cfg.depth("X")
    check_layer(lin, cfg, 1, rng)
    check_layer(lin, cfg, 2, rng)
    big = random_layer(rng, 513, 5, 2, 4)
    with pytest.raises(UnsupportedError, match="XBUF lines"):
        compile_linear(big, cfg, 1)


def test_shape_errors_name_the_layer_and_buffer():
    rng = np.random.default_rng(5)
    cfg = _cfg(lanes=16, cols=2, wbuf_kib=1)     # WBUF: 256 lines
    lin = random_layer(rng, 16 * 257, 3, 2, 4, name="layers.9.attn.o_proj")
    with pytest.raises(UnsupportedError, match=r"layers\.9\.attn\.o_proj.*(XBUF|WBUF|SBUF|QBUF)"):
        compile_linear(lin, cfg, 1)


@pytest.mark.parametrize("scheme", ["float", "weird"])
def test_unsupported_schemes(scheme):
    rng = np.random.default_rng(6)
    lin = random_layer(rng, 8, 4, 2, 4, scheme=scheme, name="layers.1.mlp.gate_proj")
    with pytest.raises(UnsupportedError, match=rf"layers\.1\.mlp\.gate_proj.*scheme '{scheme}'"):
        compile_linear(lin, _cfg(), 1)


def test_refusals():
    rng = np.random.default_rng(7)
    cfg = _cfg()
    with pytest.raises(UnsupportedError, match="act_bits = 8 but the accelerator quantizes to act_bits = 4"):
        compile_linear(random_layer(rng, 8, 4, 2, 8), cfg, 1)
    with pytest.raises(UnsupportedError, match="experts = 4 but the accelerator has experts = 2"):
        compile_linear(random_layer(rng, 8, 4, 4, 4), cfg, 1)
    with pytest.raises(UnsupportedError, match="experts = 2 < accelerator experts = 4"):
        compile_linear(random_layer(rng, 8, 4, 2, 4), _cfg(experts=4), 1)
    with pytest.raises(UnsupportedError, match="no hardware path for more scale experts"):
        compile_linear(random_layer(rng, 8, 4, 1, 4), _cfg(experts=0), 1)
    # accumulator: K*(2^k-1) = 4370*15 = 65550 > 2^15-1 with acc_bits = 16
    with pytest.raises(UnsupportedError, match="accumulator could overflow"):
        compile_linear(random_layer(rng, 4370, 2, 2, 4), _cfg(acc_bits=16), 1)
    with pytest.raises(UnsupportedError, match="K = d_in = 65536 is outside"):
        lin = random_layer(rng, 4, 2, 2, 4)
        lin = dataclasses.replace(lin, d_in=65536)
        from bitmos.compiler.lower import check_shape
        check_shape(lin.name, lin.d_in, lin.d_out, 4, _cfg(acc_bits=32))
    lin = random_layer(rng, 8, 4, 2, 4)
    lin.s_out_exp = 60
    with pytest.raises(UnsupportedError, match="OSHIFT = .* = 64 is outside 0..63"):
        compile_linear(lin, cfg, 1)
    lin = random_layer(rng, 8, 4, 2, 4)
    lin.router_exp = -1
    with pytest.raises(UnsupportedError, match="RSHIFT = .* = -1 is outside 0..63"):
        compile_linear(lin, cfg, 1)
    with pytest.raises(UnsupportedError, match="token count 0"):
        compile_linear(random_layer(rng, 8, 4, 2, 4), cfg, 0)


def test_accumulator_bound_is_exact():
    from bitmos.compiler.lower import check_shape
    cfg = _cfg(acc_bits=16, act_bits=1, experts=0)
    check_shape("l", 32767, 1, 1, cfg)              # K*(2^1-1) = 32767 = 2^15-1: allowed
    with pytest.raises(UnsupportedError, match="accumulator could overflow"):
        check_shape("l", 32768, 1, 1, cfg)
    cfg = _cfg(acc_bits=24, act_bits=8)
    check_shape("l", 32896, 1, 8, cfg)              # 32896*255 = 8388480 <= 2^23-1 = 8388607
    with pytest.raises(UnsupportedError, match="accumulator could overflow"):
        check_shape("l", 32897, 1, 8, cfg)


@pytest.mark.parametrize("layer_experts,hw_experts", [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4)])
def test_fewer_experts_map_exactly(layer_experts, hw_experts):
    cfg = _cfg(experts=hw_experts, sbuf_kib=2)
    rng = np.random.default_rng(10 * layer_experts + hw_experts)
    lin = random_layer(rng, 37, 11, layer_experts, 4)
    cl = check_layer(lin, cfg, 3, rng)
    assert cl.manifest["expert_mapping"] in ("sign-as-experts", "constant-gates")


def test_extreme_scale_that_cannot_map_exactly_is_refused():
    cfg = _cfg(experts=3, sbuf_kib=2)
    rng = np.random.default_rng(11)
    lin = random_layer(rng, 8, 4, 1, 4)
    lin.s_out[0, 2] = 32767
    with pytest.raises(UnsupportedError, match=r"cannot map s_out\[2\] = 32767 exactly onto 3 equal-gate experts"):
        compile_linear(lin, cfg, 1)


def test_every_dma_is_waited_before_its_lines_are_used():
    """Structural check of the hazard discipline on a streamed schedule (the interpreter enforces it too)."""
    cfg = _cfg()
    rng = np.random.default_rng(12)
    cl = compile_linear(random_layer(rng, 100, 200, 2, 4), cfg, 13)
    ops = [decode(w).op for w in cl.programs[0].words]
    assert ops[-1] is Op.HALT
    assert Op.WAIT in ops and ops.count(Op.LOAD) > 3 and ops.count(Op.STORE) > 3


def test_host_io_roundtrip_and_errors():
    cfg = preset_config("small")
    rng = np.random.default_rng(13)
    lin = random_layer(rng, 70, 33, cfg.experts, cfg.act_bits)
    cl = compile_linear(lin, cfg, 3, base=4096)
    assert cl.regions.weights >= 4096 and cl.base == 4096
    mem = bytearray(cl.end)
    mem[cl.base:] = cl.memory
    x = rng.integers(-100, 100, (3, 70)).astype(np.int16)
    write_layer_input(mem, cl.manifest, x)
    reg = cl.manifest["regions"]["input"]
    back = np.frombuffer(bytes(mem[reg["addr"]:reg["addr"] + reg["bytes"]]), "<i2").reshape(3, -1)
    np.testing.assert_array_equal(back[:, :70], x)
    assert not back[:, 70:].any()
    with pytest.raises(ValueError, match=r"x must be \[3, 70\]"):
        write_layer_input(mem, cl.manifest, x[:2])
    assert read_layer_output(mem, cl.manifest).shape == (3, 33)


# ---- property test ----------------------------------------------------------------------------------

@st.composite
def configs_and_layers(draw):
    cols = draw(st.sampled_from([1, 2, 4]))
    lanes = draw(st.sampled_from([8, 16, 32]))
    lanes = max(lanes, cols * 8) if lanes % cols else lanes
    cfg = AcceleratorConfig(
        name="h", rows=draw(st.integers(1, 4)), cols=cols, lanes=lanes, act_bits=draw(st.sampled_from([1, 2, 4, 8])),
        experts=draw(st.integers(0, 4)), acc_bits=24, xbuf_kib=1, wbuf_kib=1, sbuf_kib=draw(st.sampled_from([1, 2])),
        qbuf_kib=1, obuf_kib=1, meta_tokens=draw(st.integers(4, 16)), imem_words=draw(st.sampled_from([48, 4096])),
        ext_bw_bits=draw(st.sampled_from([8, 64])), ext_latency=draw(st.integers(0, 20)), ext_mem_mib=1)
    K = draw(st.integers(1, 80))
    N = draw(st.integers(1, 120))
    T = draw(st.sampled_from([1, 1, 2, 5, 11]))
    el = draw(st.sampled_from([cfg.experts, cfg.experts, 0, 1]))
    return cfg, K, N, T, el, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs_and_layers())
def test_property_random_layers_exact_or_clear_error(case):
    cfg, K, N, T, el, seed = case
    rng = np.random.default_rng(seed)
    lin = random_layer(rng, K, N, el, cfg.act_bits)
    try:
        check_layer(lin, cfg, T, rng)
    except UnsupportedError as exc:
        assert str(exc).startswith(f"layer {lin.name!r}: ")


@pytest.mark.parametrize("n,tpb,taper,sizes", [
    (128, 16, False, [16] * 8),
    (128, 16, True, [16] * 7 + [8, 4, 2, 1, 1]),
    (20, 16, False, [16, 4]),
    (20, 16, True, [4, 8, 4, 2, 1, 1]),     # the remainder first: the tail stays the halving run
    (3, 16, True, [2, 1]),
    (5, 4, True, [1, 2, 1, 1]),
    (1, 4, True, [1]),
    (7, 1, True, [1] * 7),
])
def test_weight_blocks_cover_the_tiles_once_and_taper_to_one(n, tpb, taper, sizes):
    from bitmos.compiler.schedule import weight_blocks
    blocks = weight_blocks(range(10, 10 + n), tpb, taper)
    assert [len(b) for b in blocks] == sizes
    assert [t for b in blocks for t in b] == list(range(10, 10 + n))
    assert max(len(b) for b in blocks) <= tpb


def test_a_tapered_tiling_is_exact_and_chosen_when_faster(monkeypatch):
    """A decode layer on asic32 is DMA-bound: the chooser keeps a tapered weight stream, whose last matmul
    is one tile; and tapered schedules (plane and token mode, resident and streamed weights) compute
    exactly the golden outputs."""
    from bitmos.compiler import api, synthetic_spec
    from bitmos.compiler.schedule import weight_blocks
    cfg = preset_config("asic32")
    til = api.choose_tiling(synthetic_spec("q", 4096, 4096, cfg, seed=0, materialize=False), cfg, 1)
    assert til.taper and weight_blocks(range(til.NT), til.tpb, til.taper)[-1] == range(til.NT - 1, til.NT)
    rng = np.random.default_rng(5)
    for cfg, K, N, T, mode in ((preset_config("small"), 200, 96, 1, "plane"), (_cfg(), 100, 200, 5, "token")):
        lin = random_layer(rng, K, N, cfg.experts, cfg.act_bits)
        forced = {}

        def tapered(spec, cfg, tokens, _mode=mode, _forced=forced):
            _forced["til"] = make_tiling(spec, cfg, tokens, _mode, tpb=4, taper=True)
            return _forced["til"]

        monkeypatch.setattr(api, "choose_tiling", tapered)
        cl = check_layer(lin, cfg, T, rng)
        assert cl.tiling is forced["til"] and cl.tiling.taper
        assert [len(b) for b in weight_blocks(range(cl.tiling.NT), 4, True)][-3:] == [2, 1, 1]
