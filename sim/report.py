"""Reports of simulator runs: metrics (text / JSON dict) and PNG plots (roofline, energy, timeline).

A report covers one run or a sequence of runs (the layer programs of a model, run in order): their
cycles, counts and traffic add up. Definitions (docs/energy.md):

* binary ops = 2 x lane ops (AcceleratorConfig.binary_ops_per_cycle); *useful* ones count only lanes
  i < K and token rows holding real tokens; throughput and TOPS/W use useful ops.
* array utilization = useful lane ops / (R*C*L * cycles).
* arithmetic intensity = useful binary ops / external bytes moved; the roofline's ridge is
  peak binary ops per cycle / peak external bytes per cycle.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

from bitmos.config import AcceleratorConfig
from bitmos.fileio import write_bytes_atomic, write_json_atomic, write_text_atomic
from bitmos.sim.energy import COUNT_KEYS, EnergyTable, energy_breakdown
from bitmos.sim.machine import RunResult


def summarize(results: RunResult | Sequence[RunResult], table: EnergyTable, *, tokens: int | None = None,
              names: Sequence[str] | None = None, repeat: int = 1) -> dict[str, Any]:
    """Metrics of one run or of runs executed one after another (JSON-serialisable dict).

    ``repeat``: the runs are executed that many times over (identical decode steps): the figures are those of
    ``list(results) * repeat`` without building that list, so a million steps cost what one does.
    """
    runs = [results] if isinstance(results, RunResult) else list(results)
    if not runs:
        raise ValueError("summarize needs at least one run")
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    cfg: AcceleratorConfig = runs[0].config
    cycles = sum(r.cycles for r in runs) * repeat
    counts = {k: sum(r.counts[k] for r in runs) * repeat for k in COUNT_KEYS}
    stall = sum(r.stall_cycles for r in runs) * repeat
    f_hz = cfg.clock_mhz * 1e6
    seconds = cycles / f_hz
    energy = energy_breakdown(counts, cycles, cfg, table)
    total_j = sum(energy.values()) * 1e-12
    ext_bytes = (counts["ext_read_bits"] + counts["ext_write_bits"]) / 8
    useful_ops = 2 * counts["useful_lane_ops"]
    peak_ops_cycle = cfg.binary_ops_per_cycle()
    peak_bw = cfg.ext_bw_bits / 8 * f_hz
    out: dict[str, Any] = {
        "config": cfg.name, "clock_mhz": cfg.clock_mhz, "energy_table": table.name,
        "runs": len(runs) * repeat, "errors": [{"run": i, "cause": r.cause, "pc": r.error_pc, "message": r.error_message}
                                      for i, r in enumerate(runs) if r.error],
        "cycles": cycles, "seconds": seconds, "stall_cycles": stall,
        "instructions": counts["instructions"],
        "binary_ops": 2 * counts["lane_ops"], "useful_binary_ops": useful_ops,
        "binary_ops_per_s": useful_ops / seconds if seconds else 0.0,
        "peak_binary_ops_per_s": peak_ops_cycle * f_hz,
        "array_utilization": counts["useful_lane_ops"] / (cfg.rows * cfg.cols * cfg.lanes * cycles) if cycles else 0.0,
        "ext_bytes_read": counts["ext_read_bits"] // 8, "ext_bytes_written": counts["ext_write_bits"] // 8,
        "achieved_bandwidth_bytes_per_s": ext_bytes / seconds if seconds else 0.0,
        "peak_bandwidth_bytes_per_s": peak_bw,
        "bandwidth_fraction": ext_bytes / seconds / peak_bw if seconds else 0.0,
        "arithmetic_intensity_ops_per_byte": useful_ops / ext_bytes if ext_bytes else None,
        "ridge_ops_per_byte": peak_ops_cycle * f_hz / peak_bw,
        "energy_j": total_j,
        "energy_breakdown_pj": energy,
        "tops_per_w": useful_ops / total_j / 1e12 if total_j else 0.0,
        "counts": counts,
    }
    if tokens:
        out["tokens"] = tokens
        out["tokens_per_s"] = tokens / seconds if seconds else 0.0
        out["energy_per_token_j"] = total_j / tokens
        out["tokens_per_joule"] = tokens / total_j if total_j else 0.0
    if len(runs) > 1 and repeat == 1:
        out["per_run"] = [{"name": names[i] if names else str(i), "cycles": r.cycles,
                           "stall_cycles": r.stall_cycles} for i, r in enumerate(runs)]
    return out


def format_text(s: dict[str, Any]) -> str:
    def si(v: float, unit: str) -> str:
        for p, n in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= p:
                return f"{v / p:.3g} {n}{unit}"
        return f"{v:.3g} {unit}"

    lines = [f"config {s['config']} at {s['clock_mhz']:g} MHz, energy table {s['energy_table']}, "
             f"{s['runs']} run(s)"]
    for e in s["errors"]:
        lines.append(f"  ERROR in run {e['run']}: cause {e['cause']}: {e['message']}")
    lines += [
        f"cycles            {s['cycles']:,} ({s['seconds'] * 1e3:.4g} ms), stalled {s['stall_cycles']:,}",
        f"instructions      {s['instructions']:,}",
        f"binary ops        {si(s['useful_binary_ops'], 'op')} useful, {si(s['binary_ops_per_s'], 'op/s')} "
        f"(peak {si(s['peak_binary_ops_per_s'], 'op/s')}), array utilization {100 * s['array_utilization']:.1f} %",
        f"external traffic  {si(s['ext_bytes_read'], 'B')} read, {si(s['ext_bytes_written'], 'B')} written; "
        f"{si(s['achieved_bandwidth_bytes_per_s'], 'B/s')} = {100 * s['bandwidth_fraction']:.1f} % of peak",
        _roof_line(s),
        f"energy            {s['energy_j'] * 1e3:.4g} mJ, {s['tops_per_w']:.3g} TOPS/W",
    ]
    if "tokens" in s:
        lines.append(f"tokens            {s['tokens']}: {s['tokens_per_s']:.4g} tokens/s, "
                     f"{s['energy_per_token_j'] * 1e3:.4g} mJ/token, {s['tokens_per_joule']:.4g} tokens/J")
    total = sum(s["energy_breakdown_pj"].values()) or 1.0
    lines.append("energy breakdown  " + ", ".join(
        f"{k} {100 * v / total:.1f} %" for k, v in sorted(s["energy_breakdown_pj"].items(), key=lambda kv: -kv[1])
        if v > 0))
    return "\n".join(lines) + "\n"


def _roof_line(s: dict[str, Any]) -> str:
    ai, ridge = s["arithmetic_intensity_ops_per_byte"], s["ridge_ops_per_byte"]
    if ai is None:
        return f"roofline          no external traffic (ridge {ridge:.4g} op/B)"
    side = "memory" if ai < ridge else "compute"
    return f"roofline          {ai:.4g} op/B (ridge {ridge:.4g} op/B: {side}-bound side)"


# ---- plots ---------------------------------------------------------------------------------------

def save_figure(fig, path: Path) -> None:
    """``fig`` as a PNG at ``path``, written whole or not at all."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())


def write_plots(s: dict[str, Any], out_dir: str | Path, *, trace_runs: Sequence[RunResult] = ()) -> list[Path]:
    """roofline.png, energy.png and timeline.png (Gantt of controller units vs DMA) in ``out_dir``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    paths = []
    # roofline
    fig, ax = plt.subplots(figsize=(6, 4))
    peak = s["peak_binary_ops_per_s"]
    bw = s["peak_bandwidth_bytes_per_s"]
    ridge = s["ridge_ops_per_byte"]
    ai = s["arithmetic_intensity_ops_per_byte"]
    lo = min(ridge, ai or ridge) / 100
    hi = max(ridge, ai or ridge) * 100
    xs = [lo, ridge, hi]
    ax.loglog(xs, [min(peak, x * bw) for x in xs], "k-", label="roof")
    if ai and s["binary_ops_per_s"] > 0:
        ax.loglog([ai], [s["binary_ops_per_s"]], "ro", label="this run")
    ax.set_xlabel("arithmetic intensity (binary op / external byte)")
    ax.set_ylabel("binary op / s")
    ax.set_title(f"roofline: {s['config']}")
    ax.legend()
    paths.append(out / "roofline.png")
    save_figure(fig, paths[-1])
    plt.close(fig)
    # energy breakdown
    fig, ax = plt.subplots(figsize=(6, 4))
    items = sorted(((k, v) for k, v in s["energy_breakdown_pj"].items() if v > 0), key=lambda kv: -kv[1])
    ax.barh([k for k, _ in items], [v * 1e-9 for _, v in items])
    ax.set_xlabel("energy (mJ)")
    ax.set_title(f"energy breakdown ({s['energy_table']})")
    ax.invert_yaxis()
    paths.append(out / "energy.png")
    save_figure(fig, paths[-1])
    plt.close(fig)
    # timeline: Gantt per unit of the traced runs (laid end to end), or per-run bars
    fig, ax = plt.subplots(figsize=(9, 3))
    offset = 0
    colors = {"ctrl": "0.6", "scale": "tab:orange", "array": "tab:blue", "vector": "tab:purple", "dma": "tab:green"}
    rowy = {"controller": 1, "DMA": 0}
    any_trace = False
    seen: set[str] = set()
    for r in trace_runs:
        if r.trace is None:
            continue
        any_trace = True
        from bitmos.sim.analysis import UNIT_CODES
        for unit in ("ctrl", "scale", "array", "vector", "dma"):
            sel = [i for i, u in enumerate(r.trace.unit) if UNIT_CODES[int(u)] == unit]
            if not sel:
                continue
            spans = [(offset + int(r.trace.issue[i]) + (1 if unit == "dma" else 0),
                      max(1, int(r.trace.busy[i]) + (0 if unit == "dma" else 1))) for i in sel]
            y = rowy["DMA" if unit == "dma" else "controller"]
            ax.broken_barh(spans, (y - 0.4, 0.8), facecolors=colors[unit],
                           label=None if unit in seen else unit)
            seen.add(unit)
        offset += r.cycles
    if any_trace:
        ax.set_yticks([0, 1], ["DMA", "controller"])
        ax.set_xlabel("cycle")
        ax.legend(loc="upper right", fontsize=7)
        ax.set_title("timeline (controller units vs DMA)")
    elif "per_run" in s:
        ax.bar(range(len(s["per_run"])), [p["cycles"] for p in s["per_run"]])
        ax.set_xlabel("run (layer program)")
        ax.set_ylabel("cycles")
        ax.set_title("cycles per layer program")
    paths.append(out / "timeline.png")
    save_figure(fig, paths[-1])
    plt.close(fig)
    return paths


def write_json(s: dict[str, Any], path: str | Path) -> None:
    write_json_atomic(path, s)


def write_text(s: dict[str, Any], path: str | Path) -> None:
    write_text_atomic(path, format_text(s))
