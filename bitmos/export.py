"""The integer export of a trained student: what the golden model writes and the compiler reads.

One file: safetensors tensors plus a JSON header (in the safetensors metadata) that carries the
format version, the model config, per-layer integer parameters and a SHA-256 over every tensor and over
the rest of the header (version 2; version 1 covered the tensors only and is refused: re-export), so a
mismatched version or a corrupt byte anywhere is refused with a clear error. Every header field is
checked for its type and range on load, and layer names must be safe file names (the compiler names its
files after them). Loading never unpickles.

Per binarized linear (``BinaryLinearExport``), in the accelerator's formats (docs/architecture.md):
* ``signs``: bool [d_out, d_in], True = +1 (stored bit-packed, LSB first along d_in);
* ``router``: int16 [E, d_in] with real value router * 2^-router_exp (E >= 2 only);
* ``s_in`` / ``s_out``: int16 [E, d_in] / [E, d_out] with exponents s_in_exp / s_out_exp (E >= 1);
* ``smul``/``smul_exp``: the single per-layer output scale when E = 0;
* ``bias``: int16 [d_in] with real value bias * 2^-bias_exp (FBI-LLM's beta, scheme ``fbi`` only, E = 1): the
  layer adds beta . x of each token to every output;
* ``x_frac`` (optional): the fraction bits of this layer's int16 input, chosen from calibration on real inputs;
  absent = the accelerator config's ``x_frac_bits``. Only the host's conversion and the shifts depend on it.
* ``int_weights`` (PB-LLM's salient part only): int8 [d_out, d_in], weights as 8-bit two's complement planes
  (register WBITS = 8) instead of signs;
* ``source`` / ``channels`` / ``absmax_pads`` (the parts of a split model linear, PB-LLM): the layer computes one
  part of model linear ``source``; its input is the source input's ``channels`` (int32, in order) followed by
  ``absmax_pads`` channels that the host fills with -max|x| of the whole source input (so every part's
  per-token quantizer sees the whole token's absmax and quantizes exactly as one quantizer would); their
  weights sum to zero per output (+1 and -1 for signs, 0 for integers), so they add nothing to the dot product.
  The host adds the parts' int32 outputs (:data:`SPLIT_SCHEMES`, ``bitmos.model.golden.HostSide``).
Host-side float tensors (embeddings, norms, LM head, ...) are stored under ``host.`` names.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bitmos.errors import FormatError
from bitmos.formats import layer_shifts
from bitmos.fileio import check_safe_name, why_not_a_file, write_bytes_atomic

EXPORT_VERSION = 2
_META_KEY = "bitmos_export"

#: Schemes whose linears the accelerator runs (model/export.py writes them, compiler/lower.py lowers them).
#: PB-LLM runs in its structured variant (salient input channels) as two chip layers per model linear.
CHIP_SCHEMES = ("mos", "sign", "onebit", "ternary", "fbi", "bitnet", "pb")
#: Schemes whose model linear is split into parts (chip layers over gathered input channels, outputs added on
#: the host): PB-LLM's binary part (sign weights over the non-salient channels) and its salient part (int8).
SPLIT_SCHEMES = ("pb",)
#: Bits of an ``int_weights`` layer's weights (register WBITS): PB-LLM's int8 salient weights, codes -127..127.
INT_WEIGHT_BITS = 8
#: Trailing absmax channels a part needs so that its weights cancel on them: sign weights +1 and -1 (two),
#: integer weights 0 (one).
ABSMAX_PADS = {"sign": 2, "int": 1}


def salient_channel_count(fraction: float, d_in: int) -> int:
    """How many of ``d_in`` input channels structured PB-LLM keeps in int8 at salient ``fraction``: round(fraction *
    d_in) (Python's round). One definition for the model (``PBLinear.salient_channels``) and the estimator."""
    return int(round(fraction * d_in))


def split_part_shapes(d_in: int, salient: int) -> list[tuple[str, int, int]]:
    """The chip layers of a split (PB-LLM) linear with ``d_in`` inputs of which ``salient`` are salient channels:
    [(part, K, WBITS)] -- "binary" (sign weights, WBITS 0) over the d_in - salient others and "salient"
    (int8, WBITS 8) over the salient ones, each with its absmax pads; a part without channels is left out, and a
    single part needs no pads (its own absmax is the token's). One definition for the export and the estimator."""
    if not 0 <= salient <= d_in:
        raise FormatError(f"{salient} salient channels of {d_in}")
    parts = [(name, n, bits, pads) for name, n, bits, pads in
             (("binary", d_in - salient, 0, ABSMAX_PADS["sign"]), ("salient", salient, INT_WEIGHT_BITS, ABSMAX_PADS["int"]))
             if n]
    return [(name, n + (pads if len(parts) > 1 else 0), bits) for name, n, bits, pads in parts]


@dataclass
class BinaryLinearExport:
    name: str                       # module path in the model, e.g. "layers.0.attn.q_proj"
    d_in: int
    d_out: int
    experts: int                    # 0 = one per-layer scale, 1 = one scale set, >= 2 = routed experts
    act_bits: int                   # activation bits the student was trained with
    signs: np.ndarray               # bool [d_out, d_in]
    router: np.ndarray | None = None  # int16 [E, d_in]
    router_exp: int = 0
    s_in: np.ndarray | None = None    # int16 [E, d_in]
    s_in_exp: int = 0
    s_out: np.ndarray | None = None   # int16 [E, d_out]
    s_out_exp: int = 0
    smul: int = 0                   # E = 0: int16 output scale
    smul_exp: int = 0
    scheme: str = "mos"
    nonzero: np.ndarray | None = None  # bool [d_out, d_in]: ternary only; trit = nonzero * (2*sign - 1)
    bias: np.ndarray | None = None     # int16 [d_in]: fbi only; the per-token shift beta . x, beta = bias * 2^-bias_exp
    bias_exp: int = 0
    x_frac: int | None = None          # the layer's input fraction bits (None: the config's x_frac_bits)
    int_weights: np.ndarray | None = None  # int8 [d_out, d_in]: PB-LLM's salient part (WBITS = 8)
    source: str = ""                   # split layers: the model linear this is a part of ("" = the layer itself)
    channels: np.ndarray | None = None  # split layers: int32 [d_in - absmax_pads], the source input channels taken
    absmax_pads: int = 0               # split layers: trailing channels the host fills with -max|x| of the source

    @property
    def weight_bits(self) -> int:
        """The accelerator weight format the layer needs (register WBITS): 0 = sign (+-1), 2 = ternary,
        8 = int8 (PB-LLM's salient part)."""
        if self.int_weights is not None:
            return INT_WEIGHT_BITS
        return 2 if self.nonzero is not None else 0

    @property
    def model_linear(self) -> str:
        """The model linear (module path) this layer computes, or computes a part of."""
        return self.source or self.name

    def input_frac(self, cfg) -> int:
        """Fraction bits of the layer's int16 input: its own (calibrated) ``x_frac``, else ``cfg.x_frac_bits``."""
        return cfg.x_frac_bits if self.x_frac is None else self.x_frac

    def shifts(self, cfg) -> tuple[int, int]:
        """(RSHIFT, OSHIFT) of this layer on ``cfg`` (:func:`bitmos.formats.layer_shifts` of its exponents)."""
        return layer_shifts(self.name, cfg, experts=self.experts, router_exp=self.router_exp,
                            s_in_exp=self.s_in_exp if self.experts >= 1 else 0, s_out_exp=self.s_out_exp,
                            smul_exp=self.smul_exp, bias_exp=self.bias_exp if self.bias is not None else None,
                            x_frac=self.x_frac)

    def weights(self) -> np.ndarray:
        """int8 [d_out, d_in]: the layer's integer weights, +-1 (sign schemes), {-1, 0, +1} (ternary) or int8."""
        if self.int_weights is not None:
            return self.int_weights
        w = np.where(self.signs, 1, -1).astype(np.int8)
        return w if self.nonzero is None else np.where(self.nonzero, w, 0).astype(np.int8)

    def validate(self) -> None:
        check_safe_name(self.name, "layer name")
        where = f"layer {self.name!r}"
        if self.signs.shape != (self.d_out, self.d_in) or self.signs.dtype != np.bool_:
            raise FormatError(f"{where}: signs must be bool [{self.d_out}, {self.d_in}], got "
                              f"{self.signs.dtype} {tuple(self.signs.shape)}")
        if (self.nonzero is not None) != (self.scheme == "ternary"):
            raise FormatError(f"{where}: a nonzero plane belongs to ternary layers only (scheme {self.scheme!r}, "
                              f"nonzero {'present' if self.nonzero is not None else 'missing'})")
        if self.nonzero is not None and (self.nonzero.shape != self.signs.shape or self.nonzero.dtype != np.bool_):
            raise FormatError(f"{where}: nonzero must be bool [{self.d_out}, {self.d_in}], got "
                              f"{self.nonzero.dtype} {tuple(self.nonzero.shape)}")
        if not 0 <= self.experts <= 8:
            raise FormatError(f"{where}: experts = {self.experts}, allowed 0..8")
        self._validate_split(where)
        if self.x_frac is not None and not 0 <= self.x_frac <= 15:
            raise FormatError(f"{where}: x_frac = {self.x_frac}, allowed 0..15 (fraction bits of an int16)")
        if (self.bias is not None) != (self.scheme == "fbi"):
            raise FormatError(f"{where}: a bias vector belongs to fbi layers only (scheme {self.scheme!r}, "
                              f"bias {'present' if self.bias is not None else 'missing'})")
        if self.bias is not None:
            if self.bias.shape != (self.d_in,) or self.bias.dtype != np.int16:
                raise FormatError(f"{where}: bias must be int16 [{self.d_in}], got {self.bias.dtype} "
                                  f"{tuple(self.bias.shape)}")
            if self.experts != 1:
                raise FormatError(f"{where}: an fbi layer has one scale set (experts = 1), got {self.experts}")
        want = {"router": (self.experts, self.d_in) if self.experts >= 2 else None,
                "s_in": (self.experts, self.d_in) if self.experts >= 1 else None,
                "s_out": (self.experts, self.d_out) if self.experts >= 1 else None}
        for key, shape in want.items():
            t = getattr(self, key)
            if shape is None:
                if t is not None:
                    raise FormatError(f"{where}: {key} present but experts = {self.experts}")
            elif t is None or t.shape != shape or t.dtype != np.int16:
                got = None if t is None else (t.dtype, tuple(t.shape))
                raise FormatError(f"{where}: {key} must be int16 {shape}, got {got}")
        if self.experts == 0 and not -32768 <= self.smul <= 32767:
            raise FormatError(f"{where}: smul = {self.smul} does not fit int16")

    def _validate_split(self, where: str) -> None:
        """int_weights, source, channels and absmax_pads: present together with a split scheme, consistent."""
        if self.int_weights is not None:
            if self.scheme not in SPLIT_SCHEMES:
                raise FormatError(f"{where}: int8 weights belong to the parts of split schemes "
                                  f"({', '.join(SPLIT_SCHEMES)}), not scheme {self.scheme!r}")
            if self.int_weights.shape != (self.d_out, self.d_in) or self.int_weights.dtype != np.int8:
                raise FormatError(f"{where}: int_weights must be int8 [{self.d_out}, {self.d_in}], got "
                                  f"{self.int_weights.dtype} {tuple(self.int_weights.shape)}")
            if int(self.int_weights.min(initial=0)) < -127:
                raise FormatError(f"{where}: int_weights hold -128; the codes are -127..127")
        if not self.source:
            if self.channels is not None or self.absmax_pads or self.scheme in SPLIT_SCHEMES:
                raise FormatError(f"{where}: scheme {self.scheme!r} layers are parts of a model linear: "
                                  "source, channels and absmax_pads come together with a split scheme")
            return
        check_safe_name(self.source, f"{where}: source")
        if self.scheme not in SPLIT_SCHEMES:
            raise FormatError(f"{where}: only split schemes ({', '.join(SPLIT_SCHEMES)}) have parts, not {self.scheme!r}")
        if not 0 <= self.absmax_pads < self.d_in:
            raise FormatError(f"{where}: absmax_pads = {self.absmax_pads}, allowed 0..d_in-1 = {self.d_in - 1}")
        c = self.channels
        n = self.d_in - self.absmax_pads
        if c is None or c.dtype != np.int32 or c.shape != (n,):
            got = None if c is None else (c.dtype, tuple(c.shape))
            raise FormatError(f"{where}: channels must be int32 [{n}] (d_in - absmax_pads), got {got}")
        if int(c.min()) < 0 or (n > 1 and not bool(np.all(np.diff(c) > 0))):
            raise FormatError(f"{where}: channels must be distinct non-negative input channels in ascending order")
        if self.absmax_pads:
            w = self.weights()[:, n:].astype(np.int64)
            if np.any(w.sum(1) != 0):
                raise FormatError(f"{where}: the weights of the absmax pads must sum to 0 in every row")


@dataclass
class ModelExport:
    model_config: dict[str, Any]
    linears: list[BinaryLinearExport]
    host: dict[str, np.ndarray] = field(default_factory=dict)  # float32 host-side tensors
    info: dict[str, Any] = field(default_factory=dict)         # provenance (checkpoint, command, ...)

    def linear(self, name: str) -> BinaryLinearExport:
        for lin in self.linears:
            if lin.name == name:
                return lin
        raise KeyError(f"no binarized linear named {name!r}; have {[l.name for l in self.linears][:8]}...")

    # ---- file IO ------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save

        tensors: dict[str, np.ndarray] = {}
        layers = []
        for lin in self.linears:
            lin.validate()
            tensors[f"{lin.name}.signs"] = np.packbits(lin.signs, axis=1, bitorder="little")
            if lin.nonzero is not None:
                tensors[f"{lin.name}.nonzero"] = np.packbits(lin.nonzero, axis=1, bitorder="little")
            for key in ("router", "s_in", "s_out", "bias", "int_weights", "channels"):
                t = getattr(lin, key)
                if t is not None:
                    tensors[f"{lin.name}.{key}"] = np.ascontiguousarray(t)
            fields = list(_LAYER_FIELDS) + (["bias_exp"] if lin.bias is not None else []) + \
                (["x_frac"] if lin.x_frac is not None else []) + \
                (["source", "absmax_pads"] if lin.source else [])
            layers.append({k: getattr(lin, k) for k in fields})
        for key, t in self.host.items():
            tensors[f"host.{key}"] = np.ascontiguousarray(t, dtype=np.float32)
        header = {"version": EXPORT_VERSION, "model_config": self.model_config, "layers": layers,
                  "host": sorted(self.host), "info": self.info}
        header["sha256"] = _digest(tensors, header)
        write_bytes_atomic(path, save(tensors, metadata={_META_KEY: json.dumps(header)}))

    @classmethod
    def load(cls, path: str | Path) -> "ModelExport":
        from safetensors import SafetensorError
        from safetensors.numpy import load

        p = Path(path)
        if not p.is_file():
            raise FormatError(f"export file {str(p)!r} {why_not_a_file(p)}")
        data = p.read_bytes()
        try:
            (hlen,) = struct.unpack_from("<Q", data, 0)
            meta = json.loads(data[8:8 + hlen]).get("__metadata__", {}) or {}
            header = json.loads(meta[_META_KEY]) if isinstance(meta, dict) and _META_KEY in meta else None
        except (ValueError, struct.error, UnicodeDecodeError, AttributeError, TypeError, RecursionError) as exc:
            raise FormatError(f"{p}: not a readable safetensors export ({exc})") from None
        if header is None:
            raise FormatError(f"{p}: a safetensors file without a bitmos export header (a training checkpoint? "
                              "export it with 'bitmos export CHECKPOINT --config CFG -o FILE')")
        if not isinstance(header, dict):
            raise FormatError(f"{p}: corrupt export header (not a JSON object)")
        if header.get("version") != EXPORT_VERSION:
            raise FormatError(f"{p}: export format version {header.get('version')}, this bitmos reads "
                              f"version {EXPORT_VERSION}; re-export the checkpoint")
        try:
            tensors = load(data)
        except (SafetensorError, ValueError, KeyError) as exc:
            raise FormatError(f"{p}: corrupt export tensors ({exc})") from None
        if _digest(tensors, header) != header.get("sha256"):
            raise FormatError(f"{p}: checksum mismatch: the export is corrupt")
        return cls._from_header(header, tensors, source=str(p))

    @classmethod
    def _from_header(cls, header: dict[str, Any], tensors: dict[str, np.ndarray], *,
                     source: str) -> "ModelExport":
        """Check every field of a (checksum-verified) header; a file forged with a matching checksum still
        gets a FormatError, never a KeyError or TypeError."""
        for key, kind in (("model_config", dict), ("layers", list), ("host", list), ("info", dict)):
            if not isinstance(header.get(key, {} if key == "info" else None), kind):
                raise FormatError(f"{source}: export header field {key!r} must be a JSON {kind.__name__}")
        linears, seen = [], set()
        for i, info in enumerate(header["layers"]):
            where = f"{source}: layer {i}"
            if not isinstance(info, dict) or not set(_LAYER_FIELDS) <= set(info) <= set(_LAYER_FIELDS) | set(_OPTIONAL):
                raise FormatError(f"{where}: expected the fields {', '.join(_LAYER_FIELDS)} (and optionally "
                                  f"{', '.join(_OPTIONAL)})")
            for key, kind in {**_LAYER_FIELDS, **_OPTIONAL}.items():
                if key not in info:
                    continue
                v = info[key]
                if kind is int and (isinstance(v, bool) or not isinstance(v, int) or abs(v) > 1 << 31):
                    raise FormatError(f"{where}: field {key!r} must be an integer, got {v!r}")
                if kind is str and not isinstance(v, str):
                    raise FormatError(f"{where}: field {key!r} must be a string, got {v!r}")
            name = check_safe_name(info["name"], f"{where}: layer name")
            if name in seen:
                raise FormatError(f"{where}: layer name {name!r} appears twice")
            seen.add(name)
            if not (1 <= info["d_in"] <= 1 << 24 and 1 <= info["d_out"] <= 1 << 24):
                raise FormatError(f"{where}: d_in = {info['d_in']}, d_out = {info['d_out']}; allowed 1..2^24")
            packed = tensors.get(f"{name}.signs")
            if packed is None or packed.dtype != np.uint8 or packed.ndim != 2 or \
                    packed.shape != (info["d_out"], -(-info["d_in"] // 8)):
                got = None if packed is None else (packed.dtype, tuple(packed.shape))
                raise FormatError(f"{where}: packed signs of {name!r} must be uint8 "
                                  f"[{info['d_out']}, {-(-info['d_in'] // 8)}], got {got}")
            signs = np.unpackbits(packed, axis=1, count=info["d_in"], bitorder="little").astype(bool)
            nz = tensors.get(f"{name}.nonzero")
            if nz is not None:
                if nz.dtype != np.uint8 or nz.shape != packed.shape:
                    raise FormatError(f"{where}: packed nonzero plane of {name!r} must be uint8 "
                                      f"{list(packed.shape)}, got {nz.dtype} {list(nz.shape)}")
                nz = np.unpackbits(nz, axis=1, count=info["d_in"], bitorder="little").astype(bool)
            lin = BinaryLinearExport(signs=signs, nonzero=nz, **info,
                                     **{k: tensors.get(f"{name}.{k}")
                                        for k in ("router", "s_in", "s_out", "bias", "int_weights", "channels")})
            if (lin.bias is None) != ("bias_exp" not in info):
                raise FormatError(f"{where}: bias tensor and bias_exp field of {name!r} must come together")
            lin.validate()
            linears.append(lin)
        host_names = header["host"]
        if not all(isinstance(k, str) for k in host_names):
            raise FormatError(f"{source}: export header field 'host' must list tensor names")
        missing = [k for k in host_names if f"host.{k}" not in tensors]
        if missing:
            raise FormatError(f"{source}: host tensors {missing[:4]} are named in the header but missing")
        host = {k: tensors[f"host.{k}"] for k in host_names}
        return cls(header["model_config"], linears, host, header.get("info", {}))


#: The per-layer integers of the export header and their types (ModelExport.save writes exactly these).
_LAYER_FIELDS = {"name": str, "d_in": int, "d_out": int, "experts": int, "act_bits": int, "router_exp": int,
                 "s_in_exp": int, "s_out_exp": int, "smul": int, "smul_exp": int, "scheme": str}
#: Header fields a layer has only sometimes: bias_exp (fbi, with the bias tensor), x_frac (a calibrated input format),
#: source and absmax_pads (a part of a split model linear, with the channels tensor).
_OPTIONAL = {"bias_exp": int, "x_frac": int, "source": str, "absmax_pads": int}


def _digest(tensors: dict[str, np.ndarray], header: dict[str, Any]) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) and every other header field (canonical JSON)."""
    h = hashlib.sha256()
    body = {k: v for k, v in header.items() if k != "sha256"}
    h.update(json.dumps(body, sort_keys=True).encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(np.ascontiguousarray(t).tobytes())
    return h.hexdigest()


def quantize_to_int16(values: np.ndarray, *, headroom_bits: int = 1) -> tuple[np.ndarray, int]:
    """Float tensor -> (int16 tensor, exponent e) with values ~ int * 2^-e, largest |int| < 2^(15-headroom).

    One power-of-two exponent per tensor keeps the hardware shift-only; the exponent is folded into
    RSHIFT / OSHIFT by the compiler.
    """
    values = np.asarray(values, dtype=np.float64)
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if peak == 0.0:
        return np.zeros(values.shape, np.int16), 0
    e = int(np.floor(np.log2((2 ** (15 - headroom_bits) - 1) / peak)))
    ints = np.floor(values * 2.0 ** e + 0.5)
    return np.clip(ints, -32768, 32767).astype(np.int16), e
