"""PB-LLM's two salient sets (``ModelConfig.pb_salient``): the paper's unstructured top-|W| weights ("weights", the
default) and the structured variant, whole input channels of largest infinity norm, max |W| ("channels")."""

import json

import pytest
import torch

from bitmos.errors import ConfigError, UnsupportedError
from bitmos.model.binarize import PBLinear, packed_bytes
from bitmos.model.checkpoint import _write, checkpoint_digest, load_checkpoint, read_checkpoint, save_checkpoint
from bitmos.model.config import ModelConfig
from bitmos.model.export import export_model
from bitmos.model.quant import quantize_per_token
from bitmos.model.transformer import Transformer

from .model_helpers import tiny_config


def pm1(w):
    return torch.where(w >= 0, 1.0, -1.0)


def reference_w_eff(w, mask):
    """PB-LLM's effective weight for a given salient mask, written out from the formula (not from PBLinear):
    per-row absmax int8 on the salient entries, sign(W) * mean|W| over the non-salient entries elsewhere."""
    ws = torch.where(mask, w, torch.zeros_like(w))
    row = ws.abs().amax(1, keepdim=True) / 127
    row = torch.where(row > 0, row, torch.ones_like(row))
    w_int8 = torch.clamp(torch.round(ws / row), -127, 127) * row
    scale = w.abs()[~mask].mean()
    return torch.where(mask, w_int8, scale * pm1(w))


def with_weight(w, fraction, salient):
    m = PBLinear(w.shape[1], w.shape[0], 8, fraction=fraction, salient=salient)
    with torch.no_grad():
        m.weight.copy_(w)
    return m


# ---- the structured mask -----------------------------------------------------------------------------------------

def test_channels_are_the_largest_max_abs_columns_of_a_hand_made_weight():
    # column L2 / L1 / Linf norms:  0: 3 / 3 / 3;  1: 3.67 / 9 / 1.5;  2: 2.83 / 4 / 2;  3: 0.6 / 0.6 / 0.1;
    # 4: 1.22 / 3 / 0.5. Linf picks {0, 2} for k = 2 (L2 would pick {0, 1}, L1 {1, 2}).
    w = torch.zeros(6, 5)
    w[0, 0] = -3.0
    w[:, 1] = torch.tensor([1.5, -1.5, 1.5, 1.5, -1.5, 1.5])
    w[:2, 2] = torch.tensor([2.0, -2.0])
    w[:, 3] = 0.1
    w[:, 4] = -0.5
    m = with_weight(w, 0.4, "channels")   # round(0.4 * 5) = 2 columns
    assert m.salient_channels().tolist() == [0, 2]
    expect = torch.zeros(6, 5, dtype=torch.bool)
    expect[:, [0, 2]] = True
    assert torch.equal(m.salient_mask(), expect)


def test_channels_mask_is_whole_columns_of_the_largest_norms_on_a_random_weight():
    torch.manual_seed(5)
    w = torch.randn(24, 40) * torch.rand(40) * 0.1   # columns of different scales
    m = with_weight(w, 0.2, "channels")
    mask = m.salient_mask()
    cols = mask.any(0)
    assert torch.equal(mask, cols.expand_as(mask))       # every chosen column entirely, nothing else
    assert int(cols.sum()) == 8                           # round(0.2 * 40)
    norms = [max(abs(float(v)) for v in w[:, j]) for j in range(40)]
    top = sorted(range(40), key=lambda j: -norms[j])[:8]
    assert sorted(torch.nonzero(cols).flatten().tolist()) == sorted(top)
    # the unstructured set of the same fraction is a different set of weights (so the option is really used)
    u = with_weight(w, 0.2, "weights").salient_mask()
    assert int(u.sum()) == 192 and not torch.equal(u, mask)


@pytest.mark.parametrize("d_in,fraction,k", [(128, 0.1, 13), (384, 0.1, 38), (128, 0.05, 6), (384, 0.05, 19),
                                             (10, 0.0, 0), (4, 0.1, 0)])
def test_channel_count(d_in, fraction, k):
    torch.manual_seed(0)
    m = PBLinear(d_in, 16, 8, fraction=fraction, salient="channels")
    assert m.salient_channels().numel() == k
    assert int(m.salient_mask().sum()) == 16 * k


def test_equal_norms_go_to_the_lower_index():
    w = torch.tensor([[1.0, 0.5, -1.0, 0.0, 0.5],
                      [0.0, 1.0, 0.0, -1.0, 0.5]])   # columns 0-3 have max |W| 1, column 4 0.5
    m = with_weight(w, 0.4, "channels")               # 2 of the 4 tied columns
    assert m.salient_channels().tolist() == [0, 1]
    w2 = w[:, [3, 2, 1, 0, 4]]
    assert with_weight(w2, 0.4, "channels").salient_channels().tolist() == [0, 1]


@pytest.mark.parametrize("bits", [None, 8])
def test_channels_forward_matches_the_formula(bits):
    torch.manual_seed(1)
    m = PBLinear(32, 12, bits, fraction=0.125, salient="channels")
    w = m.weight.detach()
    cols = sorted(range(32), key=lambda j: -float(w[:, j].abs().max()))[:4]
    mask = torch.zeros(12, 32, dtype=torch.bool)
    mask[:, cols] = True
    x = torch.randn(3, 5, 32)
    ref = quantize_per_token(x, bits) @ reference_w_eff(w, mask).T
    assert torch.allclose(m(x), ref, atol=1e-6)
    m(x).sum().backward()   # the STE reaches salient and binary weights alike
    g = m.weight.grad
    assert torch.isfinite(g).all() and (g[:, cols] != 0).any() and (g[:, [j for j in range(32) if j not in cols]] != 0).any()


# ---- the unstructured default is unchanged -----------------------------------------------------------------------

def main_pb_forward(w, x, fraction, act_bits):
    """PBLinear's forward as it was before ``pb_salient`` existed (bitmos main at c5d6ce9), transcribed op for op as
    plain functions, so an equal result is bit-identical to the old code, not just close."""
    a = w.abs().flatten()
    k = int(round(fraction * a.numel()))
    mask = w.abs() >= torch.kthvalue(a, a.numel() - k + 1).values
    ws = w * mask
    row = ws.abs().amax(1, keepdim=True) / 127
    row = torch.where(row > 0, row, torch.ones_like(row))
    codes = torch.clamp(torch.round(ws / row), -127, 127)
    rest = (~mask).to(w.dtype)
    scale = (w.abs() * rest).sum() / rest.sum().clamp_min(1)
    w_int8 = w * mask + (codes * row - w * mask)
    w_eff = w_int8 + (~mask) * scale * pm1(w)
    return torch.nn.functional.linear(quantize_per_token(x, act_bits), w_eff), mask


def test_weights_variant_is_the_default_and_bit_identical_to_before():
    torch.manual_seed(7)
    m = PBLinear(48, 24, 8, fraction=0.1)
    assert m.salient == "weights"
    w = m.weight.detach().clone()
    k = round(0.1 * 48 * 24)                               # 115 weights
    thresh = w.abs().flatten().sort(descending=True).values[k - 1]
    assert int((w.abs() >= thresh).sum()) == k and torch.equal(m.salient_mask(), w.abs() >= thresh)
    x = torch.randn(4, 6, 48)
    y_main, _ = main_pb_forward(w, x, 0.1, 8)
    assert torch.equal(m(x), y_main)                                          # bit for bit
    assert torch.allclose(m(x), quantize_per_token(x, 8) @ reference_w_eff(w, w.abs() >= thresh).T, atol=1e-6)
    assert "salient_channels" not in m.export()
    assert all(lin.salient == "weights" for _, lin in Transformer(tiny_config(scheme="pb")).binarized_linears())


# ---- config ------------------------------------------------------------------------------------------------------

def test_config_validates_pb_salient_in_one_line():
    with pytest.raises(ConfigError) as info:
        ModelConfig(scheme="pb", pb_salient="rows")
    msg = str(info.value)
    assert msg == "ModelConfig.pb_salient must be one of ('weights', 'channels'), got 'rows'" and "\n" not in msg
    assert ModelConfig().pb_salient == "weights"
    old = ModelConfig(scheme="pb").to_dict()
    del old["pb_salient"]                                   # a config written before the field existed
    assert ModelConfig.from_dict(old).pb_salient == "weights"
    model = Transformer(tiny_config(scheme="pb", pb_salient="channels"))
    assert all(lin.salient == "channels" for _, lin in model.binarized_linears())


# ---- checkpoints ---------------------------------------------------------------------------------------------------

def _near_tie(model):
    """Give the first linear two columns whose max |W| order float32 sees and bfloat16 rounding erases (1.002 vs 1.001
    both round to 1.0 in bfloat16; every other column is made small), so a bf16 latent weight would pick column 0."""
    _, lin = next(iter(model.binarized_linears()))
    with torch.no_grad():
        lin.weight.mul_(0.01)
        lin.weight[:, 0] = 1.001
        lin.weight[:, 1] = 1.002
    return lin


@pytest.mark.parametrize("compact", [False, True])
def test_checkpoint_round_trip_keeps_the_variant_and_the_channels(tmp_path, compact):
    torch.manual_seed(3)
    m = Transformer(tiny_config(scheme="pb", pb_salient="channels", pb_fraction=0.02, dim=64, hidden_dim=128))
    lin = _near_tie(m)
    assert lin.salient_channels().tolist() == [1]   # round(0.02 * 64) = 1 column
    lin_bf16 = with_weight(lin.weight.detach().to(torch.bfloat16).float(), lin.fraction, "channels")
    assert lin_bf16.salient_channels().tolist() == [0]   # why pb keeps its latent weights float32 under compact
    p = tmp_path / "pb.safetensors"
    save_checkpoint(p, m, step=2, compact=compact)
    m2, _ = load_checkpoint(p)
    assert m2.config.pb_salient == "channels" and m2.config.pb_fraction == 0.02
    for (path, a), (_, b) in zip(m.binarized_linears(), m2.binarized_linears()):
        assert b.salient == "channels", path
        assert torch.equal(a.salient_channels(), b.salient_channels()), path
        assert torch.equal(a.weight, b.weight), path   # latent weights float32 even when compact
    if not compact:                                        # compact rounds the embeddings and head to bfloat16
        idx = torch.randint(0, 64, (2, 10))
        assert torch.equal(m.eval()(idx)[0], m2(idx)[0])


def test_a_checkpoint_without_the_field_loads_as_the_unstructured_set(tmp_path):
    m = Transformer(tiny_config(scheme="pb"))
    p = tmp_path / "old.safetensors"
    save_checkpoint(p, m)
    meta, sd = read_checkpoint(p)
    cfg = dict(meta["config"])
    del cfg["pb_salient"]
    raw = {"format": "bitmos-model", "version": "2", "config": json.dumps(cfg),
           "train_args": json.dumps(meta["train_args"]), "step": str(meta["step"])}
    _write(p, sd, raw)
    m2, _ = load_checkpoint(p)
    assert m2.config.pb_salient == "weights"
    assert all(lin.salient == "weights" for _, lin in m2.binarized_linears())


# ---- bytes and export --------------------------------------------------------------------------------------------

def test_packed_bytes_of_both_variants():
    torch.manual_seed(0)
    # binary plane 128 * 64 / 8 = 1024 B, fp16 row scales 64 * 2 = 128 B, fp16 binary scale 2 B, plus:
    # channels: 13 columns x 64 int8 = 832 B and 13 two-byte channel indices = 26 B
    assert packed_bytes(PBLinear(128, 64, 8, 0.1, "channels")) == 1024 + 832 + 26 + 128 + 2
    # weights: 819 salient weights x (int8 + 2 index bytes) = 2457 B
    assert packed_bytes(PBLinear(128, 64, 8, 0.1, "weights")) == 1024 + 2457 + 128 + 2


def test_export_dict_has_the_channel_list_and_the_exporter_refuses_the_unstructured_set():
    torch.manual_seed(2)
    m = PBLinear(40, 8, 8, fraction=0.1, salient="channels")
    e = m.export()
    ch = e["salient_channels"]
    assert ch.dtype == torch.int64 and ch.numel() == 4
    assert torch.equal(torch.nonzero(e["salient"].any(0)).flatten(), ch)
    # the chip runs the structured set (tests/model/test_pb_export.py); the paper's set is refused by name
    model = Transformer(tiny_config(scheme="pb", pb_salient="weights"))
    with pytest.raises(UnsupportedError, match=r"layers\.0\.attn\.q_proj.*unstructured salient set.*"
                                               r"pb_salient = 'channels'"):
        export_model(model)
