"""Student -> integer export: per-scheme contents, signs, host tensors, file round trip and refusals."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from bitmos.config import AcceleratorConfig, preset_config
from bitmos.errors import FormatError, UnsupportedError
from bitmos.export import EXPORT_VERSION, ModelExport
from bitmos.model.checkpoint import save_checkpoint
from bitmos.model.export import accel_from_export, export_checkpoint, export_model
from bitmos.model.golden import GoldenModel, golden_linear
from bitmos.model.transformer import Transformer

from .model_helpers import tiny_config


def student(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_config(**kw)).eval()


def dequant(ints, exp):
    return np.asarray(ints, np.float64) * 2.0 ** -exp


def close_int16(ints, exp, ref):
    """int16 * 2^-exp reproduces ref within half an LSB; the peak uses 2^13..2^14 (one bit headroom)."""
    ref = np.asarray(ref, np.float64)
    assert np.all(np.abs(dequant(ints, exp) - ref) <= 0.5 * 2.0 ** -exp + 1e-12)
    assert 2**13 <= np.abs(ints).max() < 2**14


@pytest.mark.parametrize("experts", [1, 2, 4, 8])
def test_mos_export_contents(experts):
    model = student(scheme="mos", experts=experts, act_bits=4)
    lin0 = model.layers[0].attn.q_proj
    with torch.no_grad():     # sign(0) = +1 (also -0.0), like BinarizedLinear.sign_bits
        lin0.weight[0, 0], lin0.weight[0, 1], lin0.weight[0, 2] = 0.0, -0.0, -1e-30
        lin0.s_in[0, 0] = -0.7  # negative scales survive
    exp = export_model(model, "small")
    paths = [p for p, _ in model.binarized_linears()]
    assert [l.name for l in exp.linears] == paths and len(paths) == 2 * 7
    for (path, m), lin in zip(model.binarized_linears(), exp.linears):
        assert (lin.d_out, lin.d_in) == tuple(m.weight.shape) and lin.experts == experts and lin.act_bits == 4
        assert lin.scheme == "mos"
        assert np.array_equal(lin.signs, (m.weight.detach() >= 0).numpy())
        close_int16(lin.s_in, lin.s_in_exp, m.s_in.detach().numpy())
        close_int16(lin.s_out, lin.s_out_exp, m.s_out.detach().numpy())
        if experts >= 2:
            close_int16(lin.router, lin.router_exp, m.router.weight.detach().numpy())
        else:
            assert lin.router is None
    q = exp.linears[0]
    assert q.signs[0, 0] and q.signs[0, 1] and not q.signs[0, 2]
    assert q.s_in[0, 0] < 0
    # host: everything that is not a binarized linear, float32, unchanged
    sd = model.state_dict()
    want = {k for k in sd if not any(k.startswith(p + ".") for p in paths)}
    assert set(exp.host) == want
    assert {"tok_embeddings.weight", "norm.weight", "lm_head.weight", "layers.1.mlp_norm.weight"} <= want
    for k in want:
        assert exp.host[k].dtype == np.float32 and np.array_equal(exp.host[k], sd[k].numpy())
    assert exp.model_config == model.config.to_dict()
    assert exp.info["accelerator"] == "small" and exp.info["accelerator_fingerprint"] == preset_config(
        "small").fingerprint()
    assert accel_from_export(exp) == preset_config("small")


def test_onebit_export_is_one_expert():
    model = student(scheme="onebit", act_bits=8)
    exp = export_model(model)
    for (_, m), lin in zip(model.binarized_linears(), exp.linears):
        assert lin.experts == 1 and lin.router is None and lin.scheme == "onebit"
        close_int16(lin.s_in[0], lin.s_in_exp, m.g.detach().numpy())      # g -> s_in
        close_int16(lin.s_out[0], lin.s_out_exp, m.h.detach().numpy())    # h -> s_out
        assert np.array_equal(lin.signs, (m.weight.detach() >= 0).numpy())


def test_sign_export_is_zero_experts():
    model = student(scheme="sign", act_bits=1)
    exp = export_model(model)
    for (_, m), lin in zip(model.binarized_linears(), exp.linears):
        assert lin.experts == 0 and lin.s_in is None and lin.s_out is None and lin.router is None
        assert lin.act_bits == 1
        scale = float(m.scale().detach())
        assert abs(lin.smul * 2.0 ** -lin.smul_exp - scale) <= 0.5 * 2.0 ** -lin.smul_exp
        assert 2**13 <= abs(lin.smul) < 2**14


def test_ternary_export_trits_scale_and_file(tmp_path):
    """The trits come out exactly (nonzero plane beside the signs), gamma as one int16 scale like sign, and
    both planes survive the file; the golden linear computes with the trits, not with +-1."""
    model = student(scheme="ternary", act_bits=8)
    exp = export_model(model, "small")
    for (_, m), lin in zip(model.binarized_linears(), exp.linears):
        assert lin.scheme == "ternary" and lin.experts == 0 and lin.weight_bits == 2
        np.testing.assert_array_equal(lin.weights(), m.trits().numpy().astype(np.int8))
        assert 0 < (lin.weights() == 0).mean() < 1
        assert abs(lin.smul * 2.0 ** -lin.smul_exp - float(m.scale())) <= 0.5 * 2.0 ** -lin.smul_exp
    path = tmp_path / "t.safetensors"
    exp.save(path)
    back = ModelExport.load(path)
    for a, b in zip(exp.linears, back.linears):
        np.testing.assert_array_equal(a.weights(), b.weights())
    lin = back.linears[0]
    x = torch.randint(-3000, 3000, (3, lin.d_in))
    y_tern = golden_linear(lin, x, preset_config("small"))
    lin.nonzero[:] = True      # the same signs as +-1 weights: a different layer, different outputs
    assert not torch.equal(y_tern, golden_linear(lin, x, preset_config("small")))


def test_ternary_plane_belongs_to_ternary_layers_only():
    lin = export_model(student(scheme="sign", act_bits=8)).linears[0]
    lin.nonzero = np.ones_like(lin.signs)
    with pytest.raises(FormatError, match="nonzero plane belongs to ternary layers only"):
        lin.validate()
    lin = export_model(student(scheme="ternary", act_bits=8)).linears[0]
    lin.nonzero = None
    with pytest.raises(FormatError, match="nonzero missing"):
        lin.validate()


def test_fbi_export_alpha_beta_and_the_golden_bias(tmp_path):
    """FBI-LLM: alpha as the one s_in set, s_out exactly 1, beta as the int16 bias vector; all survive the file;
    the golden linear adds beta . x and follows the float layer (x exact in Q.8) within its quantization."""
    model = student(scheme="fbi", act_bits=8)
    with torch.no_grad():
        for _, m in model.binarized_linears():   # a trained-looking beta: not the init's column means alone
            m.beta.add_(0.02 * torch.randn_like(m.beta))
    exp = export_model(model, "small")
    for (_, m), lin in zip(model.binarized_linears(), exp.linears):
        assert lin.scheme == "fbi" and lin.experts == 1 and lin.weight_bits == 0
        close_int16(lin.s_in[0], lin.s_in_exp, m.alpha.detach().numpy())
        close_int16(lin.bias, lin.bias_exp, m.beta.detach().numpy())
        assert np.all(dequant(lin.s_out, lin.s_out_exp) == 1.0)
    path = tmp_path / "f.safetensors"
    exp.save(path)
    back = ModelExport.load(path)
    for a, b in zip(exp.linears, back.linears):
        np.testing.assert_array_equal(a.bias, b.bias)
        assert a.bias_exp == b.bias_exp
    cfg = preset_config("small")
    (_, m), lin = next(iter(model.binarized_linears())), back.linears[0]
    xf = torch.randint(-800, 800, (4, lin.d_in)).to(torch.float32) / 256      # exact in Q.8
    y = golden_linear(lin, (xf * 256).to(torch.int64), cfg).to(torch.float64) / 2 ** cfg.out_frac_bits
    want = m.binary_forward(xf[None]).detach()[0].to(torch.float64)
    assert torch.allclose(y, want, rtol=0.02, atol=0.02 * float(want.abs().max()))
    shift = (xf.to(torch.float64) @ m.beta.detach().to(torch.float64))[:, None]
    assert (y - want).abs().max() < 0.1 * shift.abs().max()   # the shift is there, not lost
    lin.bias = None
    with pytest.raises(FormatError, match="bias vector belongs to fbi layers only.*missing"):
        lin.validate()


def test_bitnet_exports_centred_signs_one_scale_and_the_host_runs_its_layernorm():
    """BitNet: the chip's layer is a sign layer (E = 0, one scale mean|W|) whose signs are those of W - mean W, not
    of W; the parameter-free LayerNorm runs on the host, so the golden model (host LN, then the chip's arithmetic)
    follows the float layer, and dropping the host's LN (feeding x itself) gives other outputs."""
    model = student(scheme="bitnet", act_bits=8)
    with torch.no_grad():      # shift every latent weight so sign(W - mean W) and sign(W) differ
        for _, m in model.binarized_linears():
            m.weight.add_(0.01)
    exp = export_model(model, "small")
    cfg = preset_config("small")
    for (_, m), lin in zip(model.binarized_linears(), exp.linears):
        assert lin.scheme == "bitnet" and lin.experts == 0 and lin.weight_bits == 0
        w = m.weight.detach()
        np.testing.assert_array_equal(lin.signs, ((w - w.mean()) >= 0).numpy())
        assert (lin.signs != (w >= 0).numpy()).any()
        assert abs(lin.smul * 2.0 ** -lin.smul_exp - float(w.abs().mean())) <= 0.5 * 2.0 ** -lin.smul_exp
    (_, m), lin = model.binarized_linears()[0], exp.linears[0]
    x = torch.randn(1, 8, lin.d_in, generator=torch.Generator().manual_seed(3)) * 3 + 1.5   # offset and scale
    want = m.binary_forward(x).detach()[0].to(torch.float64)
    golden = GoldenModel(exp, cfg)
    y = golden.host.linear_hook(golden.accelerator)(lin.name, m, x)[0].to(torch.float64)
    # exactly the chip's sign-layer arithmetic on the host's LayerNorm of x
    normed = torch.nn.functional.layer_norm(x[0], (lin.d_in,), eps=m.ln_eps)
    chip = golden_linear(lin, golden.host.to_accelerator(normed, lin.name), cfg).to(torch.float64)
    assert torch.equal(y, chip / 2 ** cfg.out_frac_bits)
    assert (y - want).norm() < 0.1 * want.norm()            # as close to float as a sign layer's golden output
    no_ln = golden_linear(lin, golden.host.to_accelerator(x[0], lin.name), cfg).to(torch.float64)
    assert (no_ln / 2 ** cfg.out_frac_bits - want).norm() > 0.5 * want.norm()


@pytest.mark.parametrize("scheme", ["pb"])
def test_unsupported_schemes_name_layer_and_scheme(scheme):
    model = student(scheme=scheme)
    with pytest.raises(UnsupportedError, match=rf"layers\.0\.attn\.q_proj.*{scheme}"):
        export_model(model)


@pytest.mark.parametrize("act_bits", [None, 3, 6])
def test_activation_widths_without_hardware_are_refused(act_bits):
    model = student(scheme="mos", act_bits=act_bits)
    with pytest.raises(UnsupportedError, match="act_bits"):
        export_model(model)


def test_teacher_is_refused():
    with pytest.raises(UnsupportedError, match="teacher"):
        export_model(student(scheme="float"))


def test_round_trip_through_file(tmp_path):
    model = student(scheme="mos", experts=4, act_bits=8)
    ckpt = tmp_path / "student.safetensors"
    save_checkpoint(ckpt, model, {"teacher": "t.safetensors"}, step=17)
    out = tmp_path / "student.bmx"
    exp = export_checkpoint(ckpt, out, AcceleratorConfig(name="x", x_frac_bits=9))
    assert exp.info["source"] == str(ckpt) and exp.info["step"] == 17 and exp.info["teacher"] == "t.safetensors"
    back = ModelExport.load(out)
    assert back.model_config == exp.model_config and back.info == exp.info
    assert set(back.host) == set(exp.host)
    for k in exp.host:
        assert np.array_equal(back.host[k], exp.host[k])
    for a, b in zip(exp.linears, back.linears):
        for key in ("name", "d_in", "d_out", "experts", "act_bits", "router_exp", "s_in_exp", "s_out_exp", "smul",
                    "smul_exp", "scheme"):
            assert getattr(a, key) == getattr(b, key)
        for key in ("signs", "router", "s_in", "s_out"):
            assert np.array_equal(getattr(a, key), getattr(b, key))
    assert accel_from_export(back).x_frac_bits == 9
    # same integers out of the golden model, from the file and from memory
    cfg = accel_from_export(back)
    x = torch.randint(-3000, 3000, (5, back.linears[0].d_in))
    assert torch.equal(golden_linear(back.linears[0], x, cfg), golden_linear(exp.linears[0], x, cfg))
    idx = torch.randint(0, 64, (1, 10))
    assert torch.equal(GoldenModel.load(out)(idx)[0], GoldenModel(exp)(idx)[0])
    assert torch.equal(GoldenModel.load(ckpt, cfg)(idx)[0], GoldenModel(exp)(idx)[0])


def _rewrite_header(path, edit):
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["bitmos_export"])
    edit(meta)
    header["__metadata__"]["bitmos_export"] = json.dumps(meta)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(data[8 + n:]))


def test_corrupt_and_mismatched_files_are_refused(tmp_path):
    exp = export_model(student(scheme="mos", experts=2, act_bits=8))
    good = tmp_path / "good.bmx"
    exp.save(good)
    ModelExport.load(good)

    flipped = tmp_path / "flipped.bmx"
    data = bytearray(good.read_bytes())
    data[-5] ^= 0x40                      # a bit in the last tensor's bytes
    flipped.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="checksum"):
        ModelExport.load(flipped)

    version = tmp_path / "version.bmx"
    version.write_bytes(good.read_bytes())
    _rewrite_header(version, lambda m: m.update(version=EXPORT_VERSION + 1))
    with pytest.raises(FormatError, match="version"):
        ModelExport.load(version)

    with pytest.raises(FormatError, match="does not exist"):
        ModelExport.load(tmp_path / "missing.bmx")

    ckpt = tmp_path / "ckpt.safetensors"    # a checkpoint is not an export
    save_checkpoint(ckpt, student(scheme="mos"))
    with pytest.raises(FormatError, match="header"):
        ModelExport.load(ckpt)


def _truncated(tmp_path):
    good = tmp_path / "good.bmx"
    export_model(student(scheme="mos", experts=2, act_bits=8)).save(good)
    truncated = tmp_path / "truncated.bmx"
    truncated.write_bytes(good.read_bytes()[:200])
    return truncated


def test_truncated_file_golden_load_is_refused(tmp_path):
    with pytest.raises(FormatError):
        GoldenModel.load(_truncated(tmp_path))


def test_truncated_file_is_refused(tmp_path):
    with pytest.raises(FormatError):
        ModelExport.load(_truncated(tmp_path))


def test_calibrated_input_formats(tmp_path):
    """--calibrate: each layer's own fraction bits from the largest input it saw (one bit of headroom), kept in
    the file; the golden model converts each layer's input in its format and follows the float layers closer."""
    from bitmos.model.export import calibration_tokens, input_frac_for
    from bitmos.model.golden import from_fixed, to_fixed

    assert [input_frac_for(p) for p in (0.0, 0.4, 1.0, 1.9, 2.0, 100.0, 1e9)] == [15, 15, 13, 13, 12, 7, 0]
    with pytest.raises(UnsupportedError, match="non-finite"):
        input_frac_for(float("nan"))
    with pytest.raises(UnsupportedError, match="outside the model's vocabulary of 64"):
        calibration_tokens(student(scheme="onebit", act_bits=8), "builtin", 256)
    model = student(scheme="onebit", act_bits=8, vocab_size=256)
    cfg = preset_config("small")
    calib = calibration_tokens(model, "builtin", 256)
    assert calib.numel() <= 256 and calib.shape[1] <= model.config.max_seq_len
    exp, fixed = export_model(model, cfg, calibration=calib), export_model(model, cfg)
    assert exp.info["calibration_tokens"] == calib.numel() and all(l.x_frac is None for l in fixed.linears)
    seen = {}

    def spy(path, module, x):
        seen[path] = x.reshape(-1, x.shape[-1])
        return module.binary_forward(x)

    with torch.no_grad():
        model(calib, linear_override=spy)
    for lin in exp.linears:   # the largest calibration input fits with one bit to spare, one more bit would not
        peak = float(seen[lin.name].abs().max())
        assert lin.input_frac(cfg) == lin.x_frac and peak * 2 ** lin.x_frac <= 2 ** 14 - 1
        assert lin.x_frac == 15 or peak * 2 ** (lin.x_frac + 1) > 2 ** 14 - 1
    path = tmp_path / "c.bmx"
    exp.save(path)
    back = ModelExport.load(path)
    assert [l.x_frac for l in back.linears] == [l.x_frac for l in exp.linears]
    assert max(l.x_frac for l in back.linears) > cfg.x_frac_bits   # this student's inputs are small
    # closer to the float layers than the one fixed format, on the inputs they were calibrated for
    modules = dict(model.binarized_linears())
    err = {}
    for name, e in (("calibrated", back), ("fixed", fixed)):
        total = 0.0
        for lin in e.linears:
            x = seen[lin.name]
            with torch.no_grad():
                want = modules[lin.name].binary_forward(x[None])[0].double()
            got = from_fixed(golden_linear(lin, to_fixed(x, lin.input_frac(cfg)), cfg), cfg.out_frac_bits, torch.float64)
            total += float((got - want).norm() / want.norm())
        err[name] = total
    assert err["calibrated"] < 0.7 * err["fixed"], err
    lin = back.linears[0]
    lin.x_frac = 16
    with pytest.raises(FormatError, match="x_frac = 16, allowed 0..15"):
        lin.validate()
