"""Trained student -> integer export (:class:`bitmos.export.ModelExport`): what the compiler and the golden model read.

Per binarized linear (module path, e.g. ``layers.0.attn.q_proj``), in the accelerator's number formats:

==========  ===  ==========================================================================================
scheme      E    exported
==========  ===  ==========================================================================================
``sign``    0    signs; ``smul``/``smul_exp`` = int16 of the single scale mean|W|
``onebit``  1    signs; ``s_in`` = g [1, d_in], ``s_out`` = h [1, d_out] (int16 + one exponent each)
``mos``     E    signs; ``s_in`` [E, d_in], ``s_out`` [E, d_out]; ``router`` [E, d_in] when E >= 2
``ternary`` 0    signs and the nonzero plane (the trits); ``smul``/``smul_exp`` = int16 of gamma = mean|W|
``bitnet``  0    signs of W - mean W; ``smul``/``smul_exp`` = int16 of mean|W|; its LayerNorm runs on the host
``fbi``     1    signs; ``s_in`` = alpha [1, d_in], ``s_out`` = 1 [1, d_out]; ``bias`` = beta [d_in] (int16 + bias_exp)
``pb``      0/1  two parts (structured PB-LLM, ``pb_salient = "channels"``): ``<path>.binary``, E = 0, signs over
                 the non-salient input channels, ``smul`` = the binary scale; ``<path>.salient``, E = 1,
                 ``int_weights`` = the int8 codes of the salient channels, ``s_in`` = 2^14 (exponent 14, so
                 v = x * 2^E0_V_SHIFT as in the binary part), ``s_out`` = the per-row scales; each with its absmax pads
                 (:func:`bitmos.export.split_part_shapes`). The paper's unstructured set has no chip path.
other       --   :class:`bitmos.errors.UnsupportedError` naming the layer and the scheme
==========  ===  ==========================================================================================

Signs follow :meth:`BinarizedLinear.sign_bits` (latent W >= 0 is +1, so sign(0) = sign(-0.0) = +1). Every float tensor
that is not part of a binarized linear (embeddings, norms, LM head) goes to ``host`` unchanged (float32). The header
carries the model config and the provenance (source checkpoint, training step, target accelerator and its fingerprint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitmos import __version__
from bitmos import formats as F
from bitmos.config import AcceleratorConfig
from bitmos.errors import UnsupportedError
from bitmos.export import (ABSMAX_PADS, CHIP_SCHEMES, EXPORT_VERSION, BinaryLinearExport, ModelExport,
                           quantize_to_int16, split_part_shapes)
#: activation widths the accelerator's quantizer produces
HW_ACT_BITS = (1, 2, 4, 8)


def resolve_accel(accel: AcceleratorConfig | str | Path | None) -> AcceleratorConfig:
    """An AcceleratorConfig from a config, a preset name, a .toml/.json path, or None (the default config)."""
    if accel is None:
        return AcceleratorConfig()
    if isinstance(accel, AcceleratorConfig):
        return accel
    return AcceleratorConfig.load(accel)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def _int16(values: np.ndarray, where: str, what: str) -> tuple[np.ndarray, int]:
    if not np.all(np.isfinite(values)):
        raise UnsupportedError(f"layer {where!r}: {what} has non-finite values; cannot export")
    return quantize_to_int16(values)


def export_layers(path: str, module) -> list[BinaryLinearExport]:
    """One binarized linear -> its chip layers: one :class:`BinaryLinearExport`, or the parts of a split scheme
    (PB-LLM). Raises UnsupportedError for schemes without hardware."""
    info = module.export()
    if info["scheme"] == "pb":
        return export_pb_parts(path, info)
    return [export_linear(path, module, info)]


def _check_exportable(path: str, info: dict) -> None:
    scheme, act_bits = info["scheme"], info["act_bits"]
    if scheme not in CHIP_SCHEMES:
        raise UnsupportedError(f"layer {path!r}: scheme {scheme!r} has no hardware path yet "
                               f"(exportable schemes: {', '.join(CHIP_SCHEMES)})")
    if act_bits not in HW_ACT_BITS:
        raise UnsupportedError(f"layer {path!r}: act_bits = {act_bits!r}; the accelerator quantizes activations "
                               f"to {', '.join(map(str, HW_ACT_BITS))} bits (W1A16 has no hardware path)")


def export_pb_parts(path: str, info: dict) -> list[BinaryLinearExport]:
    """A structured PB-LLM linear (``PBLinear.export()``) -> its binary and salient chip layers (module docstring).

    Exact split: the float layer is Q(x) (m * s_b * B + M * codes * row)^T with one per-token quantizer over all of
    x; each part's input carries x's absmax in its pads, so both parts quantize every channel to the same code
    with the same D, and the host's sum of the two outputs is the layer (up to each part's output rounding)."""
    _check_exportable(path, info)
    if "salient_channels" not in info:
        raise UnsupportedError(f"layer {path!r}: PB-LLM with the paper's unstructured salient set "
                               "(pb_salient = 'weights') has no chip path: the chip runs structured PB-LLM, whole "
                               "salient input channels in an int8 pass (pb_salient = 'channels'); docs/model.md")
    if info["act_bits"] < 2:
        raise UnsupportedError(f"layer {path!r}: PB-LLM's int8 pass uses integer weight planes, which need "
                               f"act_bits >= 2 (got {info['act_bits']})")
    signs = info["sign"].cpu().numpy().astype(bool)
    d_out, d_in = signs.shape
    salient = info["salient_channels"].cpu().numpy().astype(np.int64)
    rest = np.setdiff1d(np.arange(d_in), salient)
    shapes = {part: (k, bits) for part, k, bits in split_part_shapes(d_in, len(salient))}
    split = len(shapes) > 1
    parts = []
    if "binary" in shapes:
        pads = ABSMAX_PADS["sign"] if split else 0
        pad_signs = np.tile(np.array([True, False]), (d_out, 1))[:, :pads]      # +1 and -1: they cancel
        lin = BinaryLinearExport(name=f"{path}.binary", d_in=shapes["binary"][0], d_out=d_out, experts=0,
                                 act_bits=int(info["act_bits"]), signs=np.ascontiguousarray(
                                     np.concatenate([signs[:, rest], pad_signs], 1)),
                                 scheme="pb", source=path, channels=rest.astype(np.int32), absmax_pads=pads)
        smul, smul_exp = _int16(np.array([info["scale"]], dtype=np.float64), path, "binary scale")
        lin.smul, lin.smul_exp = int(smul[0]), int(smul_exp)
        parts.append(lin)
    if "salient" in shapes:
        pads = ABSMAX_PADS["int"] if split else 0
        codes = info["int8"].cpu().numpy().astype(np.int8)[:, salient]
        codes = np.concatenate([codes, np.zeros((d_out, pads), np.int8)], 1)  # the pad's weight is 0
        lin = BinaryLinearExport(name=f"{path}.salient", d_in=shapes["salient"][0], d_out=d_out, experts=1,
                                 act_bits=int(info["act_bits"]), signs=np.ascontiguousarray(codes >= 0),
                                 scheme="pb", int_weights=np.ascontiguousarray(codes), source=path,
                                 channels=salient.astype(np.int32), absmax_pads=pads)
        # v = x * 2^E0_V_SHIFT, as in the binary part (E = 0), so both parts quantize with one D
        lin.s_in, lin.s_in_exp = np.full((1, lin.d_in), 1 << F.E0_V_SHIFT, np.int16), F.E0_V_SHIFT
        lin.s_out, lin.s_out_exp = _int16(_np(info["row_scale"]).reshape(1, d_out), path, "row scales")
        parts.append(lin)
    for lin in parts:
        lin.validate()
    return parts


def export_linear(path: str, module, info: dict | None = None) -> BinaryLinearExport:
    """One binarized linear of an unsplit scheme -> :class:`BinaryLinearExport` (raises UnsupportedError for
    schemes without hardware and for split schemes, which :func:`export_layers` exports)."""
    info = module.export() if info is None else info
    scheme = info["scheme"]
    _check_exportable(path, info)
    if scheme == "pb":
        raise UnsupportedError(f"layer {path!r}: a PB-LLM linear is exported as parts (export_layers)")
    act_bits = info["act_bits"]
    signs = info["sign"].cpu().numpy().astype(bool)
    d_out, d_in = signs.shape
    lin = BinaryLinearExport(name=path, d_in=d_in, d_out=d_out, experts=0, act_bits=int(act_bits),
                             signs=np.ascontiguousarray(signs), scheme=scheme)
    if scheme == "ternary":   # one per-tensor scale gamma, like sign; the zero trits as a second plane
        lin.nonzero = np.ascontiguousarray(info["nonzero"].cpu().numpy().astype(bool))
    # bitnet is a sign layer with centred signs on the chip: its parameter-free LayerNorm is the host's
    # (``BinarizedLinear.host_input``), and absmax quantization of LN(x) is the chip's per-token quantizer
    if scheme in ("sign", "ternary", "bitnet"):
        smul, smul_exp = _int16(np.array([info["scale"]], dtype=np.float64), path, "scale")
        lin.smul, lin.smul_exp = int(smul[0]), int(smul_exp)
    elif scheme == "fbi":   # y = sign(W) Q(alpha * x) + beta . x: alpha is s_in, no output scale, beta the bias
        lin.experts = 1
        lin.s_in, lin.s_in_exp = _int16(_np(info["alpha"]).reshape(1, d_in), path, "alpha")
        lin.s_out, lin.s_out_exp = _int16(np.ones((1, d_out)), path, "s_out")
        beta = _np(info["beta"]).reshape(d_in)
        lin.bias, lin.bias_exp = _int16(beta, path, "beta")
        if not beta.any():
            lin.bias_exp = 16   # any exponent represents 0; this one keeps RSHIFT in range on every config
    else:
        s_in = _np(info["s_in"]).reshape(-1, d_in)      # onebit: g (d_in,) -> (1, d_in); mos: (E, d_in)
        s_out = _np(info["s_out"]).reshape(-1, d_out)
        lin.experts = s_in.shape[0]
        lin.s_in, lin.s_in_exp = _int16(s_in, path, "s_in")
        lin.s_out, lin.s_out_exp = _int16(s_out, path, "s_out")
        if lin.experts >= 2:
            router = info.get("router")
            if router is None:
                raise UnsupportedError(f"layer {path!r}: {lin.experts} experts but no router")
            lin.router, lin.router_exp = _int16(_np(router), path, "router")
        if not 1 <= lin.experts <= 8:
            raise UnsupportedError(f"layer {path!r}: {lin.experts} scale experts; the export format allows 1..8")
    lin.validate()
    return lin


#: Headroom of a calibrated input format: the largest input seen sits at half of the int16 range, so an input up
#: to twice that (unseen in calibration) still does not saturate.
CALIBRATION_HEADROOM_BITS = 1


@torch.no_grad()
def calibrate_inputs(model, idx: torch.Tensor) -> dict[str, float]:
    """The largest |x| at each binarized linear's input over a float forward of tokens ``idx`` (B, T)."""
    peaks: dict[str, float] = {}

    def spy(path, module, x):
        v = module.host_input(x)          # what the chip takes (BitNet: after the host's LayerNorm)
        peaks[path] = max(peaks.get(path, 0.0), float(v.abs().max()) if v.numel() else 0.0)
        return module.binary_forward(x)

    model.eval()
    model(idx, linear_override=spy)
    return peaks


def input_frac_for(peak: float, *, headroom_bits: int = CALIBRATION_HEADROOM_BITS) -> int:
    """Fraction bits of an int16 input whose calibrated peak is ``peak``: the most, up to 15, that keep
    peak * 2^f <= 2^(15 - headroom_bits) - 1 (0 when even 0 fraction bits cannot: the host saturates)."""
    if not np.isfinite(peak):
        raise UnsupportedError(f"calibration saw a non-finite input ({peak}); the model diverged")
    limit = (1 << (15 - headroom_bits)) - 1
    f = 15
    while f > 0 and peak * (1 << f) > limit:
        f -= 1
    return f


def calibration_tokens(model, corpus: str = "builtin", tokens: int = 4096) -> torch.Tensor:
    """The first ``tokens`` tokens of ``corpus``'s training split (never the validation text) in the model's own
    tokenizer, as windows of at most the model's context: the calibration set of :func:`export_model`."""
    from bitmos.model.data import ByteTokenizer, encode_corpus, load_corpus

    train, _ = load_corpus(corpus)
    tok = getattr(model, "tokenizer", None) or ByteTokenizer()
    ids = encode_corpus(train[: 64 * tokens], tok)[:tokens]   # a byte-level slice is enough text for any tokenizer
    if ids.numel() < 2:
        raise UnsupportedError(f"calibration corpus {corpus!r} gave {ids.numel()} tokens")
    if int(ids.max()) >= model.config.vocab_size:
        raise UnsupportedError(f"calibration corpus {corpus!r} has token {int(ids.max())}, outside the model's "
                               f"vocabulary of {model.config.vocab_size} (the model's tokenizer does not fit it)")
    seq = min(model.config.max_seq_len, ids.numel())
    n = ids.numel() // seq
    return ids[: n * seq].reshape(n, seq)


def export_model(model, accel: AcceleratorConfig | str | None = None, *, info: dict[str, Any] | None = None,
                 calibration: torch.Tensor | None = None) -> ModelExport:
    """A trained student (``bitmos.model.transformer.Transformer``) -> :class:`ModelExport`.

    ``accel`` is the target accelerator: its name and fingerprint (and number formats) are recorded in the header
    so the golden model and the compiler can check they run the export as intended; the integer parameters
    themselves do not depend on it (the compiler adapts the layer to the hardware).

    ``calibration`` (token ids (B, T)): run the float student on them and give every binarized linear its own
    input format (``x_frac``, :func:`input_frac_for` of the largest input it saw) instead of the config's
    ``x_frac_bits``: real layers' inputs span very different ranges (a normed attention input peaks near 1, an MLP
    down projection's input near 100), and one fixed Q7.8 wastes most of the int16 on the first.
    """
    accel = resolve_accel(accel)
    config = model.config
    if not config.binarized:
        raise UnsupportedError("the float teacher has no binarized linears to export; export a student")
    peaks = calibrate_inputs(model, calibration) if calibration is not None else {}
    linears, prefixes = [], []
    for path, module in model.binarized_linears():
        for lin in export_layers(path, module):
            if calibration is not None:   # the parts of a split linear share its input, so its format
                lin.x_frac = input_frac_for(peaks[path])
            linears.append(lin)
        prefixes.append(path + ".")
    host = {}
    for key, value in model.state_dict().items():
        if any(key.startswith(p) for p in prefixes):
            continue
        if not value.is_floating_point():
            raise UnsupportedError(f"host tensor {key!r} is {value.dtype}, the export stores float32 only")
        host[key] = value.detach().to(torch.float32).cpu().numpy()
    prov = {"exporter": "bitmos.model.export", "bitmos_version": __version__, "export_version": EXPORT_VERSION,
            "accelerator": accel.name, "accelerator_fingerprint": accel.fingerprint(),
            "accelerator_config": accel.to_dict()}
    if calibration is not None:
        prov["calibration_tokens"] = int(calibration.numel())
    prov.update(info or {})
    return ModelExport(model_config=config.to_dict(), linears=linears, host=host, info=prov)


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None,
                      accel: AcceleratorConfig | str | None = None) -> ModelExport:
    """Load a student checkpoint, export it, and write the export to ``out`` (if given). Returns the export."""
    from bitmos.model.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    exp = export_model(model, accel, info={"source": str(checkpoint), "step": meta.get("step", 0),
                                           "teacher": meta.get("train_args", {}).get("teacher")})
    if out is not None:
        exp.save(out)
    return exp


def accel_from_export(exp: ModelExport) -> AcceleratorConfig | None:
    """The target accelerator recorded in an export's header (None if the header has none)."""
    data = exp.info.get("accelerator_config")
    return AcceleratorConfig.from_dict(data, source="export header") if isinstance(data, dict) else None
