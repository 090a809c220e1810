"""The integer export of a trained student: what the golden model writes and the compiler reads.

One file: safetensors tensors plus a JSON header (in the safetensors metadata) that carries the
format version, the model config, per-layer integer parameters and a SHA-256 over every tensor, so a
mismatched version or a corrupt file is refused with a clear error. Loading never unpickles.

Per binarized linear (``BinaryLinearExport``), in the accelerator's formats (docs/architecture.md):
* ``signs``: bool [d_out, d_in], True = +1 (stored bit-packed, LSB first along d_in);
* ``router``: int16 [E, d_in] with real value router * 2^-router_exp (E >= 2 only);
* ``s_in`` / ``s_out``: int16 [E, d_in] / [E, d_out] with exponents s_in_exp / s_out_exp (E >= 1);
* ``smul``/``smul_exp``: the single per-layer output scale when E = 0.
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
from bitmos.fileio import write_bytes_atomic

EXPORT_VERSION = 1
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

    def validate(self) -> None:
        where = f"layer {self.name!r}"
        if self.signs.shape != (self.d_out, self.d_in) or self.signs.dtype != np.bool_:
            raise FormatError(f"{where}: signs must be bool [{self.d_out}, {self.d_in}], got "
                              f"{self.signs.dtype} {tuple(self.signs.shape)}")
        if not 0 <= self.experts <= 8:
            raise FormatError(f"{where}: experts = {self.experts}, allowed 0..8")
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
            for key in ("router", "s_in", "s_out"):
                t = getattr(lin, key)
                if t is not None:
                    tensors[f"{lin.name}.{key}"] = np.ascontiguousarray(t)
            layers.append({k: getattr(lin, k) for k in (
                "name", "d_in", "d_out", "experts", "act_bits", "router_exp", "s_in_exp", "s_out_exp",
                "smul", "smul_exp", "scheme")})
        for key, t in self.host.items():
            tensors[f"host.{key}"] = np.ascontiguousarray(t, dtype=np.float32)
        header = {"version": EXPORT_VERSION, "model_config": self.model_config, "layers": layers,
                  "host": sorted(self.host), "info": self.info, "sha256": _digest(tensors)}
        write_bytes_atomic(path, save(tensors, metadata={_META_KEY: json.dumps(header)}))

    @classmethod
    def load(cls, path: str | Path) -> "ModelExport":
        from safetensors import SafetensorError
        from safetensors.numpy import load

        p = Path(path)
        if not p.is_file():
            raise FormatError(f"export file {str(p)!r} does not exist")
        data = p.read_bytes()
        try:
            (hlen,) = struct.unpack_from("<Q", data, 0)
            meta = json.loads(data[8:8 + hlen]).get("__metadata__", {}) or {}
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            raise FormatError(f"{p}: not a readable safetensors export ({exc})") from None
        if _META_KEY not in meta:
            raise FormatError(f"{p}: a safetensors file without a bitmos export header (a training checkpoint? "
                              "export it with 'bitmos export CHECKPOINT --config CFG -o FILE')")
        try:
            tensors = load(data)
        except (SafetensorError, ValueError, KeyError) as exc:
            raise FormatError(f"{p}: corrupt export tensors ({exc})") from None
        header = json.loads(meta[_META_KEY])
        if header.get("version") != EXPORT_VERSION:
            raise FormatError(f"{p}: export format version {header.get('version')}, this bitmos reads "
                              f"version {EXPORT_VERSION}; re-export the checkpoint")
        if _digest(tensors) != header.get("sha256"):
            raise FormatError(f"{p}: checksum mismatch: the export is corrupt")
        linears = []
        for info in header["layers"]:
            name = info["name"]
            signs = np.unpackbits(tensors[f"{name}.signs"], axis=1, count=info["d_in"],
                                  bitorder="little").astype(bool)
            lin = BinaryLinearExport(signs=signs, **info,
                                     **{k: tensors.get(f"{name}.{k}") for k in ("router", "s_in", "s_out")})
            lin.validate()
            linears.append(lin)
        host = {k: tensors[f"host.{k}"] for k in header["host"]}
        return cls(header["model_config"], linears, host, header.get("info", {}))


def _digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
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
