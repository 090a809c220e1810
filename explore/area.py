"""Area model: FPGA resources of a config, fitted by least squares on recorded synthesis runs.

Records are SynthResult dicts (``bitmos synth --record FILE`` appends one); the shipped set is
``explore/data/synth_records.json`` (docs/fpga.md lists the commands that made it). For one
(target, component) the model is linear in non-negative coefficients over features of the config.
Array and PE (``--top array`` / ``pe``):

    LUT ~ a * R*C*L  +  b * R*C*acc_bits  +  c * R*C*w_log  +  d * R*C*k_log  +  e * (R + C) * L  +  f

* R*C*L: the XNOR/AND gates and popcount trees (one LUT4 handles ~2 lanes of a tree level);
* R*C*acc_bits: the accumulators and their adders (carry chains: ~1 LUT per bit);
* R*C*log2(weight_bits): integer weight planes (``weight_bits`` >= 2; 0 for sign-only): the wider plane
  shift (b + p instead of b + 1) and the sign flag of the top weight plane in front of each accumulator;
* R*C*log2(k): the plane-weight shifter / negation in front of the accumulator;
* (R + C) * L: the skew registers and operand muxes at the array's edges;
* f: control (counters, FSM).

The whole accelerator (``--top accelerator``) is the array model (fitted on the array records) plus
the scale-expert unit, buffers and control, fitted on the accelerator records over C*(E+1) (the
scale unit's C lanes x E router/mixing products, plus its quantize and scale-out multipliers), the DMA
queue's slots beyond the first (``max(1, dma_queue) - 1``: per slot a descriptor in each of the
engine's three queues and a countdown in the controller) and 1;
multipliers (DSP blocks) are fitted on C*(E+1), C and 1 (measured: they do not grow with R or L).

FF uses the same features as LUT. The fit is non-negative least squares (a few dozen records make
the unconstrained fit swing signs); with fewer records than features + 1 only the leading features
are used. :func:`fit` returns the coefficients and the relative error on each record; docs/dse.md
reports them. Block RAMs are counted, not fitted (:func:`bram_blocks`, checked against Yosys' mapping).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bitmos.config import AcceleratorConfig
from bitmos.fileio import write_json_atomic

FEATURES = ("rcl", "rc_acc", "rc_wlog", "rc_klog", "edge_l", "one")
ACCEL_FEATURES = ("scale_lanes", "queue_slots", "one")   # on top of the array model (see fit)
DSP_FEATURES = ("scale_lanes", "cols", "one")


def feature_names(component: str = "array", resource: str = "luts") -> tuple[str, ...]:
    if component == "accelerator":
        return DSP_FEATURES if resource == "dsps" else ACCEL_FEATURES
    return FEATURES


def features(cfg: AcceleratorConfig | dict[str, Any], component: str = "array",
             resource: str = "luts") -> list[float]:
    d = cfg.to_dict() if isinstance(cfg, AcceleratorConfig) else cfg
    R, C, L = d["rows"], d["cols"], d["lanes"]
    if component == "pe":
        R = C = 1
    klog = max(1.0, math.log2(d["act_bits"]) + 1)
    wlog = math.log2(d.get("weight_bits", 1))   # records made before weight_bits existed are sign-only arrays
    values = {"rcl": R * C * L, "rc_acc": R * C * d["acc_bits"], "rc_wlog": R * C * wlog, "rc_klog": R * C * klog,
              "edge_l": (R + C) * L if component != "pe" else 0, "scale_lanes": C * (d["experts"] + 1),
              "queue_slots": max(1, d.get("dma_queue", 0)) - 1,   # records made before dma_queue: one transfer
              "cols": C, "one": 1.0}
    return [float(values[n]) for n in feature_names(component, resource)]


def shipped_records_path() -> Path:
    return Path(str(resources.files("bitmos.explore").joinpath("data/synth_records.json")))


def load_records(path: str | Path | None = None) -> list[dict[str, Any]]:
    p = Path(path) if path else shipped_records_path()
    if not p.exists():
        return []
    return json.loads(p.read_text())


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Add ``record`` to a JSON list file, replacing an earlier record with the same key."""
    p = Path(path)
    recs = json.loads(p.read_text()) if p.exists() else []
    recs = [r for r in recs if r.get("key") != record.get("key")]
    recs.append({k: v for k, v in record.items() if k not in ("cached",)})
    write_json_atomic(p, recs)


def nnls(A: np.ndarray, b: np.ndarray, iters: int = 500) -> np.ndarray:
    """Non-negative least squares (Lawson-Hanson active set), small problems only."""
    m, n = A.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = A.T @ (b - A @ x)
    for _ in range(iters):
        if passive.all() or w[~passive].max(initial=-np.inf) <= 1e-10 * max(1.0, np.abs(b).max()):
            break
        j = np.argmax(np.where(passive, -np.inf, w))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-12
        w = A.T @ (b - A @ x)
    return x


@dataclass
class AreaModel:
    target: str
    component: str
    coef: dict[str, dict[str, float]]          # resource -> feature -> coefficient
    errors: dict[str, list[float]] = field(default_factory=dict)   # resource -> relative errors
    records: list[str] = field(default_factory=list)                # config names used
    base: "AreaModel | None" = None    # accelerator: the array model its LUT/FF sit on top of

    def predict(self, cfg: AcceleratorConfig | dict[str, Any]) -> dict[str, float]:
        under = self.base.predict(cfg) if self.base is not None else {}
        return {res: under.get(res, 0.0) + float(sum(c[name] * v for name, v in
                                                     zip(feature_names(self.component, res),
                                                         features(cfg, self.component, res))))
                for res, c in self.coef.items()}

    def max_error(self, resource: str = "luts") -> float:
        e = self.errors.get(resource, [])
        return max((abs(x) for x in e), default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "component": self.component, "coef": self.coef,
                "errors": self.errors, "records": self.records,
                "base": self.base.to_dict() if self.base is not None else None}


def fit(records: Sequence[dict[str, Any]], target: str = "ecp5", component: str = "array",
        resources_: Sequence[str] | None = None, pnr: bool = True) -> AreaModel:
    """Fit the model on the records of (target, component) that carry a config.

    Resources: LUT and FF, plus DSP for the accelerator. ``pnr=True`` (default) fits placed counts;
    ``pnr=False`` the Yosys netlist counts (``bitmos synth --no-pnr``; nextpnr adds ~5-15 %
    route-through LUTs, docs/fpga.md). With fewer records than features + 1 only the leading features
    are used, and the constant.
    """
    if resources_ is None:
        resources_ = ("luts", "ffs", "dsps") if component == "accelerator" else ("luts", "ffs")
    rows = [r for r in records if r.get("target") == target and r.get("component", "array") == component
            and r.get("config") and bool(r.get("pnr", True)) == pnr]
    if not rows:
        raise ValueError(f"no synthesis records for target {target!r} component {component!r}")
    base = None
    if component == "accelerator":   # the array part from the (larger) set of array records
        try:
            base = fit(records, target, "array", pnr=pnr)
        except ValueError:
            base = None
    coef: dict[str, dict[str, float]] = {}
    errors: dict[str, list[float]] = {}
    for res in resources_:
        names = feature_names(component, res)
        A = np.array([features(r["config"], component, res) for r in rows], dtype=float)
        under = np.array([base.predict(r["config"]).get(res, 0.0) if base is not None else 0.0
                          for r in rows])
        # n records fix n coefficients: the leading n - 1 features and the constant (one record: a constant)
        used = len(names) if len(rows) > len(names) else len(rows) - 1
        keep = np.array([i < used or name == "one" for i, name in enumerate(names)])
        A = A * keep
        # Scale columns so the active-set solver sees comparable magnitudes.
        scale = np.maximum(np.abs(A).max(axis=0), 1e-9)
        b = np.array([float(r.get(res) or 0) for r in rows])
        x = nnls(A / scale, b - under) / scale
        coef[res] = {name: float(v) for name, v in zip(names, x)}
        pred = A @ x + under
        errors[res] = [float((p - y) / y) if y else 0.0 for p, y in zip(pred, b)]
    return AreaModel(target, component, coef, errors, [r.get("config_name") or "?" for r in rows], base)


def memory_blocks(width: int, depth: int, target: str = "ecp5") -> int:
    """Block RAMs for one width x depth memory with one read and one write port: the best of the
    block's aspect ratios (ECP5 DP16KD: 36x512 ... 1x16384; iCE40 SB_RAM40_4K: 16x256 ... 2x2048).
    ECP5 memories of at most 16 lines go to distributed RAM (TRELLIS_DPR16X4), as Yosys maps them."""
    if target == "ecp5":
        if depth <= 16:
            return 0
        shapes = [(36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)]
    else:  # iCE40 SB_RAM40_4K
        shapes = [(16, 256), (8, 512), (4, 1024), (2, 2048)]
    return min(math.ceil(width / w) * math.ceil(depth / d) for w, d in shapes)


def true_dual_port_blocks(width: int, depth: int, target: str = "ecp5") -> int:
    """Block RAMs for one width x depth memory used through both ports of the block (one read-write
    port, one read port): the block's true-dual-port aspect ratios (ECP5 DP16KD: 18x1024 ... 1x16384;
    no 36-bit mode). iCE40 SB_RAM40_4K has one read and one write port: two copies."""
    if target != "ecp5":
        return 2 * memory_blocks(width, depth, target)
    if depth <= 16:
        return 0
    shapes = [(18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)]
    return min(math.ceil(width / w) * math.ceil(depth / d) for w, d in shapes)


def bram_blocks(cfg: AcceleratorConfig, target: str = "ecp5", *, meta_bits: int | None = None) -> int:
    """Block RAMs of the whole accelerator (``rtl/buffers.py``), counted the way Yosys maps them. X, W,
    S and OBUF's DMA bank have a DMA read-write port and a datapath read port: one true-dual-port set
    of blocks, or two simple-dual-port copies where those are fewer (36-bit lines of 512); SBUF has one
    reader when E = 0 (the scale unit never reads it); OBUF's compute bank has two readers with their
    own addresses: two copies; QBUF's L-bit write slots each take whole 9-bit byte lanes; the softmax
    exponent table is one more block when E >= 2. Measured: tiny 18 DP16KD (docs/fpga.md), equal to
    this count. ``meta_bits``: the META width to count instead of ``cfg.meta_bits`` (a record synthesized
    under an earlier contract: the record's own ``meta_bits``)."""
    n = 0
    for b in "XWSQO":
        width = cfg.line_bits(b)
        if b == "Q":
            if target == "ecp5":   # QBUF is written one L-bit slot at a time: whole 9-bit byte lanes per slot
                width = cfg.rows * math.ceil(cfg.lanes / 9) * 9
            n += memory_blocks(width, cfg.depth(b), target)
        elif b == "S" and cfg.experts == 0:
            n += memory_blocks(width, cfg.depth(b), target)
        else:
            shared = min(2 * memory_blocks(width, cfg.depth(b), target),
                         true_dual_port_blocks(width, cfg.depth(b), target))
            n += shared
            if b == "O":   # the compute bank: read by scaleout and by the DMA engine, written by compute
                n += 2 * memory_blocks(width, cfg.depth(b), target)
    n += memory_blocks(64, cfg.imem_words, target) + memory_blocks(cfg.meta_bits if meta_bits is None else meta_bits, cfg.meta_tokens, target)
    return n + (1 if cfg.experts >= 2 else 0)


_DEFAULT: dict[tuple[str, str], AreaModel] = {}


def default_model(target: str = "ecp5", component: str = "array") -> AreaModel:
    """The model fitted on the shipped records (cached)."""
    key = (target, component)
    if key not in _DEFAULT:
        _DEFAULT[key] = fit(load_records(), target, component)
    return _DEFAULT[key]


def preferred_model(target: str = "ecp5") -> AreaModel:
    """The whole-accelerator model when there are accelerator records, else the array model.

    Raises ValueError when there are no records for ``target`` at all."""
    try:
        return default_model(target, "accelerator")
    except ValueError:
        return default_model(target, "array")


def estimate(cfg: AcceleratorConfig, target: str = "ecp5", model: AreaModel | None = None) -> dict[str, float]:
    """LUT / FF (/ DSP) from the fitted model (:func:`preferred_model` unless given) and block RAMs of
    the buffers (counted)."""
    est = (model or preferred_model(target)).predict(cfg)
    est["brams"] = float(bram_blocks(cfg, target))
    return est
