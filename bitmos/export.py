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

    @property
    def weight_bits(self) -> int:
        """The accelerator weight format the layer needs (register WBITS): 0 = sign (+-1), 2 = ternary."""
        return 2 if self.nonzero is not None else 0

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
        """int8 [d_out, d_in]: the layer's integer weights, +-1 (sign schemes) or {-1, 0, +1} (ternary)."""
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
            for key in ("router", "s_in", "s_out", "bias"):
                t = getattr(lin, key)
                if t is not None:
                    tensors[f"{lin.name}.{key}"] = np.ascontiguousarray(t)
            fields = list(_LAYER_FIELDS) + (["bias_exp"] if lin.bias is not None else []) + \
                (["x_frac"] if lin.x_frac is not None else [])
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
                                     **{k: tensors.get(f"{name}.{k}") for k in ("router", "s_in", "s_out", "bias")})
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
#: Header fields a layer has only sometimes: bias_exp (fbi, with the bias tensor), x_frac (a calibrated input format).
_OPTIONAL = {"bias_exp": int, "x_frac": int}


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
