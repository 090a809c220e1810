"""Design-space sweeps: configs x a model shape -> tokens/s, energy/token, area; resumable.

A sweep spec (TOML, docs/dse.md)::

    name = "llama7b"
    base = "asic32"                  # preset or config file the grid varies
    model = "llama-2-7b"              # or a [model] table (dim, hidden_dim, n_layers, n_heads[, n_kv_heads])
    prefill_tokens = 64
    energy_table = "horowitz45_hbm2"
    backend = "auto"                 # sim (compiler + simulator timing mode) | contract | auto
    auto_buffers = true              # double a buffer the compiler says is too small, until it fits
    synth = false                    # true: synthesize every point (slow); false: the area model
    target = "ecp5"                  # area model / synthesis target
    workers = 2
    objectives = ["max:decode_tokens_per_s", "min:decode_uj_per_token", "min:luts"]
    [set]                            # fixed overrides applied to base
    ext_mem_mib = 4096
    [grid]                           # the cross product of these lists
    rows = [8, 16, 32]
    cols = [16, 32]
    [[points]]                       # and/or explicit points (overrides of base)
    rows = 4

Each point's result is one JSON line appended (one write + fsync) to ``OUT/results.jsonl`` under the
point's key (a hash of everything that determines it), so an interrupted sweep resumes where it stopped
and a finished point is never recomputed. At the end ``results.csv``, ``results.json`` and
``pareto.png`` are (re)written from all points of the spec.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bitmos.config import AcceleratorConfig
from bitmos.errors import BitmosUserError, ConfigError
from bitmos.fileio import write_json_atomic, write_text_atomic

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

#: Bumped when evaluation changes so results of older code are not reused.
SWEEP_VERSION = 1

DEFAULT_OBJECTIVES = ("max:decode_tokens_per_s", "min:decode_uj_per_token", "min:luts")

_SPEC_KEYS = {"name", "base", "model", "prefill_tokens", "energy_table", "backend", "auto_buffers", "synth",
              "target", "device", "top", "workers", "objectives", "set", "grid", "points", "out", "plot"}


@dataclass
class SweepSpec:
    name: str = "sweep"
    base: str = "small"
    model: Any = "llama-2-7b"
    prefill_tokens: int = 64
    energy_table: str | None = None
    backend: str = "auto"
    auto_buffers: bool = True
    synth: bool = False
    target: str = "ecp5"
    device: str | None = None
    top: str = "array"
    workers: int = 2
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    set: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    out: str | None = None
    plot: dict[str, Any] = field(default_factory=dict)
    source_dir: str = "."

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "sweep spec", source_dir: str = ".") -> "SweepSpec":
        unknown = set(d) - _SPEC_KEYS
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(_SPEC_KEYS))}")
        d = dict(d)
        for k, v in d.get("grid", {}).items():
            if not isinstance(v, list) or not v:
                raise ConfigError(f"{source}: grid.{k} must be a non-empty list, got {v!r}")
        if "objectives" in d:
            from bitmos.explore.pareto import parse_objectives

            try:
                parse_objectives(d["objectives"])
            except ValueError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            d["objectives"] = tuple(d["objectives"])
        return cls(**d, source_dir=source_dir)

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"sweep spec {str(p)!r} does not exist")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: cannot parse: {exc}") from None
        data.setdefault("name", p.stem)
        return cls.from_dict(data, source=str(p), source_dir=str(p.parent))

    def base_config(self) -> AcceleratorConfig:
        base = self.base
        p = Path(self.source_dir) / base
        cfg = AcceleratorConfig.load(p if p.is_file() else base)
        if self.set:
            cfg = AcceleratorConfig.from_dict(dict(cfg.to_dict(), **self.set), source=f"{self.name} [set]")
        return cfg

    def overrides(self) -> list[dict[str, Any]]:
        """The points as overrides of the base config: the grid's cross product, then the list."""
        out = []
        if self.grid:
            keys = list(self.grid)
            for values in itertools.product(*(self.grid[k] for k in keys)):
                out.append(dict(zip(keys, values)))
        out += [dict(p) for p in self.points]
        if not out:
            out.append({})
        return out


def point_key(task: dict[str, Any]) -> str:
    blob = json.dumps({k: v for k, v in task.items() if k not in ("index",)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_tasks(spec: SweepSpec, backend: str) -> list[dict[str, Any]]:
    from bitmos.explore.perf import resolve_shape

    base = spec.base_config().to_dict()
    shape = resolve_shape(spec.model)
    tasks = []
    for i, ov in enumerate(spec.overrides()):
        cfgd = dict(base, **ov)
        cfgd["name"] = ",".join(f"{k}={v}" for k, v in ov.items()) or base["name"]
        task = {"config": cfgd, "overrides": ov, "shape": shape, "prefill_tokens": spec.prefill_tokens,
                "energy_table": spec.energy_table, "backend": backend, "auto_buffers": spec.auto_buffers,
                "synth": spec.synth, "target": spec.target, "device": spec.device, "top": spec.top,
                "version": SWEEP_VERSION}
        task["key"] = point_key(task)
        task["index"] = i
        tasks.append(task)
    return tasks


def evaluate_point(task: dict[str, Any]) -> dict[str, Any]:
    """One point: performance, energy and area. Never raises for a bad point: it reports infeasible."""
    from bitmos.explore import area as A
    from bitmos.explore.perf import Infeasible, evaluate

    t0 = time.perf_counter()
    row: dict[str, Any] = {"key": task["key"], "overrides": task["overrides"], "feasible": False, "reason": ""}
    try:
        cfg = AcceleratorConfig.from_dict(task["config"], source="point")
        res = evaluate(cfg, task["shape"], prefill_tokens=task["prefill_tokens"],
                       energy_table=task["energy_table"], backend=task["backend"],
                       auto_buffers=task["auto_buffers"])
        cfg = AcceleratorConfig.from_dict(res["config"], source="point")
        row.update(res)
        row["feasible"] = True
        if task["synth"]:  # measured area; without synth, write_outputs fills in the area model
            from bitmos.explore.rtlbridge import binary_ops_per_cycle
            from bitmos.explore.synth import rtl_verilog, synthesize

            v, top = rtl_verilog(cfg, task["top"])
            s = synthesize(v, top, target=task["target"], device=task["device"],
                           binary_ops_per_cycle=binary_ops_per_cycle(cfg, task["top"]),
                           config=cfg.to_dict(), config_name=cfg.name, component=task["top"])
            row.update(luts=s.luts, ffs=s.ffs, brams=A.bram_blocks(cfg, task["target"]), fmax_mhz=s.fmax_mhz,
                       area_source=f"synth:{s.part}:{task['top']}")
        row["binary_ops_per_cycle"] = cfg.binary_ops_per_cycle()
    except (Infeasible, BitmosUserError) as exc:
        row["reason"] = str(exc)
        row["config"] = task["config"]
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


# ---- results file ---------------------------------------------------------------------------------

def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """key -> row; a torn last line (a crash mid-write) is ignored."""
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "key" in row:
                out[row["key"]] = row
    return out


def append_result(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line with a single write, then fsync: a point is recorded whole or not at all."""
    data = (json.dumps(row, sort_keys=True, default=str) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # a torn line from an earlier crash would swallow this one: start on a fresh line
        if os.fstat(fd).st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- running ----------------------------------------------------------------------------------------

def _iter_local(tasks, workers: int):
    if workers <= 0:
        for t in tasks:
            yield evaluate_point(t)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers) as ex:
        futs = [ex.submit(evaluate_point, t) for t in tasks]
        try:
            for f in as_completed(futs):
                yield f.result()
        except BaseException:
            for f in futs:
                f.cancel()
            raise


def _iter_dask(tasks, scheduler):
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ConfigError("--scheduler needs dask.distributed: pip install -e '.[dask]'") from None
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futs = [client.submit(evaluate_point, t, pure=False, key=f"bitmos-point-{t['key']}") for t in tasks]
        for f in as_completed(futs):
            yield f.result()
    finally:
        if client is not scheduler:
            client.close()


def run_sweep(spec: SweepSpec, *, out: str | Path | None = None, workers: int | None = None,
              scheduler: Any = None, limit: int | None = None, backend: str | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    from bitmos.explore.perf import pick_backend

    t0 = time.perf_counter()
    be = pick_backend(backend or spec.backend)
    outdir = Path(out or spec.out or f"sweep-{spec.name}")
    outdir.mkdir(parents=True, exist_ok=True)
    results_path = outdir / "results.jsonl"
    tasks = make_tasks(spec, be)
    done = read_results(results_path)
    todo = [t for t in tasks if t["key"] not in done]
    skipped = len(tasks) - len(todo)
    if limit is not None:
        todo = todo[:max(0, limit)]
    say = log or (lambda m: None)
    say(f"sweep {spec.name}: {len(tasks)} points, {skipped} already in {results_path}, {len(todo)} to run "
        f"(backend {be}, {'dask ' + str(scheduler) if scheduler else f'{workers if workers is not None else spec.workers} workers'})")
    computed = 0
    it = _iter_dask(todo, scheduler) if scheduler else _iter_local(
        todo, spec.workers if workers is None else workers)
    for row in it:
        append_result(results_path, row)
        done[row["key"]] = row
        computed += 1
        say(f"  [{skipped + computed}/{len(tasks)}] {row['overrides']}: "
            + (f"decode {row['decode_tokens_per_s']:.3g} tok/s, {row['decode_uj_per_token']:.4g} uJ/tok, "
               f"prefill {row['prefill_tokens_per_s']:.3g} tok/s, LUT {row.get('luts')}"
               if row["feasible"] else f"infeasible: {row['reason'][:120]}") + f" ({row['seconds']:.1f} s)")
    rows = [done[t["key"]] for t in tasks if t["key"] in done]
    summary = write_outputs(spec, rows, outdir)
    summary.update(points=len(tasks), computed=computed, skipped=skipped, backend=be,
                   seconds=time.perf_counter() - t0, results=str(results_path))
    return summary


# ---- outputs ----------------------------------------------------------------------------------------

CSV_METRICS = ("feasible", "decode_tokens_per_s", "decode_uj_per_token", "prefill_tokens_per_s",
               "prefill_uj_per_token", "decode_bw_frac", "decode_stall_frac", "prefill_array_util",
               "decode_bound_tokens_per_s", "luts", "ffs", "brams", "fmax_mhz", "area_source",
               "binary_ops_per_cycle", "backend", "energy_table", "seconds", "reason")
CONFIG_COLS = ("rows", "cols", "lanes", "act_bits", "acc_bits", "experts", "ext_bw_bits", "clock_mhz",
               "xbuf_kib", "wbuf_kib", "sbuf_kib", "qbuf_kib", "obuf_kib")


def fill_area(rows: list[dict[str, Any]], target: str) -> None:
    """LUT/FF from the area model fitted on the current records, BRAM from the buffer sizes, for every
    feasible row that was not synthesized (done at output time so new records improve old sweeps)."""
    from bitmos.explore import area as A

    try:
        model = A.default_model(target, "array")
    except ValueError as exc:
        model, why = None, str(exc)
    for r in rows:
        if not r.get("feasible") or str(r.get("area_source", "")).startswith("synth"):
            continue
        cfg = AcceleratorConfig.from_dict(r["config"], source="row")
        if model is None:
            r["area_source"] = f"none ({why})"
            continue
        est = A.estimate(cfg, target, model)
        r.update(luts=round(est["luts"]), ffs=round(est["ffs"]), brams=int(est["brams"]),
                 area_source=f"model:{target}:array")


def write_outputs(spec: SweepSpec, rows: list[dict[str, Any]], outdir: Path) -> dict[str, Any]:
    from bitmos.explore.pareto import pareto_front

    fill_area(rows, spec.target)
    feas = [r for r in rows if r.get("feasible")]
    front_idx = pareto_front(feas, spec.objectives)
    front_keys = {feas[i]["key"] for i in front_idx}
    lines = []
    header = ["key", *CONFIG_COLS, *CSV_METRICS, "pareto"]
    for r in rows:
        cfg = r.get("config", {})
        vals = [r["key"], *(cfg.get(c) for c in CONFIG_COLS), *(r.get(m) for m in CSV_METRICS),
                r["key"] in front_keys]
        lines.append(vals)
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(lines)
    write_text_atomic(outdir / "results.csv", buf.getvalue())
    summary = {"name": spec.name, "objectives": list(spec.objectives), "infeasible": len(rows) - len(feas),
               "pareto": len(front_keys), "pareto_keys": sorted(front_keys),
               "csv": str(outdir / "results.csv"), "json": str(outdir / "results.json")}
    write_json_atomic(outdir / "results.json", dict(summary, rows=rows))
    if feas:
        try:
            summary["png"] = str(plot_pareto(feas, front_keys, outdir / "pareto.png", spec))
        except Exception as exc:  # the numbers matter more than the picture
            summary["png_error"] = f"{type(exc).__name__}: {exc}"
    return summary


def plot_pareto(rows: list[dict[str, Any]], front_keys: set[str], path: Path, spec: SweepSpec) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    from bitmos.explore.pareto import pareto_front

    panels = [("decode_tokens_per_s", "decode_uj_per_token", "decode"),
              ("prefill_tokens_per_s", "prefill_uj_per_token", f"prefill ({spec.prefill_tokens} tokens)")]
    colour = spec.plot.get("color", "luts")
    cvals = [r.get(colour) for r in rows]
    have_c = all(isinstance(v, (int, float)) and v > 0 for v in cvals)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    sc = None
    for ax, (x, y, title) in zip(axes, panels):
        xs = [r[x] for r in rows]
        ys = [r[y] for r in rows]
        kw = dict(c=cvals, cmap="viridis", norm=LogNorm()) if have_c else dict(color="tab:blue")
        sc = ax.scatter(xs, ys, s=28, alpha=0.85, **kw)
        f2 = pareto_front(rows, [f"max:{x}", f"min:{y}"])
        pts = sorted((xs[i], ys[i]) for i in f2)
        if pts:
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="red", lw=1.2,
                    label="2-D Pareto front (tokens/s vs energy)")
        fk = [i for i, r in enumerate(rows) if r["key"] in front_keys]
        ax.scatter([xs[i] for i in fk], [ys[i] for i in fk], s=80, facecolors="none", edgecolors="black",
                   lw=1.0, label=f"Pareto over {', '.join(o.split(':')[1] for o in spec.objectives)}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{title}: tokens/s")
        ax.set_ylabel(f"{title}: energy per token (uJ)")
        ax.set_title(f"{spec.name}: {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    if have_c and sc is not None:
        fig.colorbar(sc, ax=axes, label=f"{colour} (area)")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
