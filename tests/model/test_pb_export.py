"""Structured PB-LLM on the chip: a model linear exported as two chip layers (a sign part over the non-salient
input channels, an int8 part over the salient ones), each quantizing exactly as the float layer's one quantizer,
and the host's sum of the two tracking the float layer."""

import dataclasses

import numpy as np
import pytest
import torch

from bitmos import formats as F
from bitmos.config import preset_config
from bitmos.errors import FormatError, UnsupportedError
from bitmos.export import ABSMAX_PADS, ModelExport, split_part_shapes
from bitmos.model.binarize import PBLinear
from bitmos.model.export import export_model, export_pb_parts
from bitmos.model.golden import GoldenLinear, GoldenModel, check_parts, part_input, quantize_token
from bitmos.model.transformer import Transformer

from .model_helpers import tiny_config

W8 = dataclasses.replace(preset_config("small"), name="small-w8", weight_bits=8, acc_bits=32)


def _layer(d_in=64, d_out=24, fraction=0.1, seed=0):
    torch.manual_seed(seed)
    m = PBLinear(d_in, d_out, 8, fraction=fraction, salient="channels")
    with torch.no_grad():
        m.weight.normal_(0, 0.02)
        m.weight[:, 5] *= 6        # a few strong columns, so the salient set is not a tie-break
        m.weight[:, 40] *= 4
    return m


def test_split_part_shapes():
    assert split_part_shapes(128, 13) == [("binary", 115 + ABSMAX_PADS["sign"], 0),
                                          ("salient", 13 + ABSMAX_PADS["int"], 8)]
    assert split_part_shapes(128, 0) == [("binary", 128, 0)]        # one part: its own absmax, no pads
    assert split_part_shapes(10, 10) == [("salient", 10, 8)]
    with pytest.raises(FormatError):
        split_part_shapes(10, 11)


def test_parts_cover_the_input_and_their_pads_cancel():
    m = _layer()
    binary, salient = export_pb_parts("l", m.export())
    assert (binary.name, salient.name) == ("l.binary", "l.salient")
    assert binary.source == salient.source == "l"
    sal = m.salient_channels().numpy()
    assert 5 in sal and 40 in sal and salient.channels.tolist() == sal.tolist()
    assert sorted(binary.channels.tolist() + salient.channels.tolist()) == list(range(64))
    assert (binary.weight_bits, salient.weight_bits) == (0, 8)
    assert binary.experts == 0 and salient.experts == 1     # the salient part quantizes v = x * 2^14 like the binary
    assert salient.s_in_exp == F.E0_V_SHIFT and (salient.s_in == 1 << F.E0_V_SHIFT).all()
    wb, ws = binary.weights().astype(int), salient.weights().astype(int)
    assert (wb[:, -2:].sum(1) == 0).all() and (wb[:, -2:] != 0).all() and (ws[:, -1] == 0).all()
    # the int8 part holds the layer's codes of the salient columns, the sign part its signs elsewhere
    _, codes, _, _ = m.parts()
    assert np.array_equal(ws[:, :-1], codes.numpy()[:, sal])
    assert np.array_equal(wb[:, :-2], np.where(m.sign_bits().numpy(), 1, -1)[:, binary.channels])


def test_each_part_quantizes_like_the_whole_token():
    """With the absmax pads, every channel gets the code (and every token the D) one quantizer over the whole
    input gives, including a token whose peak is -32768 (whose |.| does not fit int16)."""
    m = _layer()
    parts = export_pb_parts("l", m.export())
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-3000, 3000, (6, 64), generator=g, dtype=torch.int64)
    x[1, 5] = -32768
    x[2] = 0
    q_whole, d_whole = quantize_token(x << F.E0_V_SHIFT, 8)   # what one E = 0 quantizer over all of x gives
    for lin in parts:
        tr = GoldenLinear(lin, W8).trace(part_input(lin, x))
        n = len(lin.channels)
        assert torch.equal(tr["q"][:, :n], q_whole[:, torch.from_numpy(lin.channels.astype(np.int64))])
        assert torch.equal(tr["D"], d_whole)


def test_golden_sum_tracks_the_float_layer():
    model = Transformer(tiny_config(dim=64, hidden_dim=128, scheme="pb", pb_salient="channels"))
    torch.manual_seed(1)
    idx = torch.randint(0, 64, (2, 16))
    golden = GoldenModel(export_model(model, W8, calibration=idx), W8)
    x = torch.randn(5, 64)
    for path, mod in list(model.binarized_linears())[:3]:
        if mod.in_features != 64:
            continue
        with torch.no_grad():
            want = mod.binary_forward(x)
            got = golden.host.linear_hook(golden.accelerator)(path, mod, x)
        assert float((got - want).norm() / want.norm()) < 0.01, path
    lg, _ = golden(idx)
    lf, _ = model.eval()(idx)
    assert (lg.argmax(-1) == lf.argmax(-1)).float().mean() > 0.95


def test_export_file_round_trip_and_tampering(tmp_path):
    model = Transformer(tiny_config(scheme="pb", pb_salient="channels", pb_fraction=0.25))
    ex = export_model(model, W8)
    assert len(ex.linears) == 2 * len(list(model.binarized_linears()))
    ex.save(tmp_path / "pb.bmx")
    back = ModelExport.load(tmp_path / "pb.bmx")
    for a, b in zip(ex.linears, back.linears):
        assert (a.name, a.source, a.absmax_pads) == (b.name, b.source, b.absmax_pads)
        assert np.array_equal(a.channels, b.channels) and np.array_equal(a.weights(), b.weights())
    # a part whose pad weights do not cancel, or whose channels repeat, is refused
    lin = dataclasses.replace(ex.linears[0], signs=ex.linears[0].signs.copy())
    lin.signs[:, -1] = lin.signs[:, -2]
    with pytest.raises(FormatError, match="absmax pads must sum to 0"):
        lin.validate()
    lin = dataclasses.replace(ex.linears[0], channels=np.zeros_like(ex.linears[0].channels))
    with pytest.raises(FormatError, match="distinct"):
        lin.validate()
    a, b = ex.linears[0], ex.linears[1]
    overlap = dataclasses.replace(b, channels=a.channels[: len(b.channels)].copy())
    with pytest.raises(FormatError, match="split its 32 inputs exactly once"):
        check_parts(a.source, [a, overlap], 32, W8)
    with pytest.raises(FormatError, match="split schemes"):
        dataclasses.replace(ex.linears[1], scheme="sign").validate()


def test_pb_needs_integer_planes():
    model = Transformer(tiny_config(scheme="pb", pb_salient="channels", act_bits=1))
    with pytest.raises(UnsupportedError, match="act_bits >= 2"):
        export_model(model, W8)
