"""Design-space sweeps: configs x a model shape -> tokens/s, energy/token, area; resumable.

A sweep spec (TOML, docs/dse.md)::

    name = "llama7b"
    base = "asic32"                  # preset or config file the grid varies
    model = "llama-2-7b"              # or a [model] table (dim, hidden_dim, n_layers, n_heads[, n_kv_heads])
    prefill_tokens = 64
    energy_table = "horowitz45_hbm2"
    backend = "auto"                 # sim (compiler + simulator timing mode, the one estimator) | auto
    auto_buffers = true              # double a buffer the compiler says is too small, until it fits
    synth = false                    # true: synthesize every point (slow); false: the area model
    target = "ecp5"                  # area model / synthesis target
    top = "accelerator"              # what synth = true synthesizes: accelerator / array / pe
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
point's key (a hash of everything that determines it) with the SHA-256 of the row, so an interrupted sweep
resumes where it stopped, a finished point is never recomputed, and a torn or corrupt line is recomputed. At the end ``results.csv``, ``results.json`` and
``pareto.png`` are (re)written from all points of the spec.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import itertools
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bitmos.config import LATER_UNITS, AcceleratorConfig
from bitmos.errors import BitmosUserError, ConfigError
from bitmos.fileio import write_json_atomic, write_text_atomic

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

#: Bumped when the result rows change form, so rows of older code are not reused.
SWEEP_VERSION = 1


@functools.lru_cache(maxsize=1)
def estimator_fingerprint() -> str:
    """A hash of the code a point's figures come from: the contract (config, formats, ISA, the cycle and
    footprint definitions), the compiler, the simulator with its energy tables and the estimator. It is
    part of every point's key, so a sweep resumed after any of them changed (a contract change adds
    cycles) recomputes its points instead of mixing old and new figures; the area columns are refreshed
    from the current records on every run anyway."""
    import bitmos
    from bitmos import compiler, sim
    from bitmos.explore import perf

    root = Path(bitmos.__file__).parent
    files = [root / f"{name}.py" for name in ("config", "formats", "isa", "semantics")]
    files += sorted(Path(compiler.__file__).parent.glob("*.py")) + sorted(Path(sim.__file__).parent.rglob("*.py"))
    files += sorted(p for p in (Path(sim.__file__).parent / "energy_tables").rglob("*") if p.is_file())
    files.append(Path(perf.__file__))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]

DEFAULT_OBJECTIVES = ("max:decode_tokens_per_s", "min:decode_uj_per_token", "min:luts")

_SPEC_KEYS = {"name", "base", "model", "prefill_tokens", "energy_table", "backend", "auto_buffers", "synth",
              "target", "device", "top", "workers", "objectives", "set", "grid", "points", "out", "plot",
              "distill"}

#: The type each spec key must have (checked on load, so a bad value fails before any point runs).
_SPEC_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "base": (str,), "model": (str, dict), "prefill_tokens": (int,), "energy_table": (str,),
    "backend": (str,), "auto_buffers": (bool,), "synth": (bool,), "target": (str,), "device": (str,),
    "top": (str,), "workers": (int,), "objectives": (list,), "set": (dict,), "grid": (dict,), "points": (list,),
    "out": (str,), "plot": (dict,), "distill": (dict,)}

#: Largest prompt a sweep point may prefill (the compiler's tiling handles any count; this keeps a typo from
#: turning into a run of hours).
MAX_PREFILL_TOKENS = 1 << 16

#: Row metrics an objective may name: the numbers evaluate_point and fill_area put in every feasible row,
#: and the numeric config fields.
OBJECTIVE_METRICS = frozenset(
    [f"{phase}_{m}" for phase in ("decode", "prefill")
     for m in ("cycles", "tokens_per_s", "uj_per_token", "stall_frac", "bw_frac", "array_util")]
    + ["decode_bound_tokens_per_s", "prefill_tokens", "luts", "ffs", "brams", "dsps", "fmax_mhz",
       "binary_ops_per_cycle", "seconds"]
    + ["rows", "cols", "lanes", "act_bits", "acc_bits", "experts", "ext_bw_bits", "clock_mhz",
       "xbuf_kib", "wbuf_kib", "sbuf_kib", "qbuf_kib", "obuf_kib", *LATER_UNITS])


def _unique(values: list[Any]) -> list[Any]:
    """``values`` without repeats, first occurrence kept (TOML values: compared by their JSON text)."""
    seen, out = set(), []
    for v in values:
        key = json.dumps(v, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def builtin_specs() -> list[str]:
    """Names of the sweep specs shipped in ``bitmos/explore/sweeps`` (``bitmos sweep NAME``)."""
    return sorted(p.stem for p in (Path(__file__).parent / "sweeps").glob("*.toml"))


def _spec_path(path: str | Path) -> Path:
    """A spec file, or the shipped spec of that name (a bare name: letters, digits, '_', '-')."""
    p = Path(path)
    if p.exists() or not re.fullmatch(r"[A-Za-z0-9_-]+", str(path)):
        return p
    if str(path) in builtin_specs():
        return Path(__file__).parent / "sweeps" / f"{path}.toml"
    raise ConfigError(f"sweep spec {str(path)!r} is neither a file nor a shipped spec "
                      f"(shipped: {', '.join(builtin_specs())})")


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
    top: str = "accelerator"
    workers: int = 2
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    set: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    out: str | None = None
    plot: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)   # a co-design sweep (explore/codesign.py) when set
    source_dir: str = "."

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "sweep spec", source_dir: str = ".") -> "SweepSpec":
        unknown = set(d) - _SPEC_KEYS
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(_SPEC_KEYS))}")
        d = dict(d)
        for k, v in d.items():
            kinds = _SPEC_TYPES[k]
            if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
                names = " or ".join({"str": "a string", "dict": "a table", "list": "a list", "int": "an integer",
                                     "bool": "true/false"}[t.__name__] for t in kinds)
                raise ConfigError(f"{source}: {k} must be {names}, got {v!r}")
        if not 1 <= d.get("prefill_tokens", 1) <= MAX_PREFILL_TOKENS:
            raise ConfigError(f"{source}: prefill_tokens = {d['prefill_tokens']}, allowed 1..{MAX_PREFILL_TOKENS}")
        if d.get("workers", 0) < 0:
            raise ConfigError(f"{source}: workers = {d['workers']} must be >= 0")
        if "out" in d and (Path(d["out"]).is_absolute() or ".." in Path(d["out"]).parts or not d["out"]):
            raise ConfigError(f"{source}: out = {d['out']!r} must be a relative folder without '..' (a spec "
                              "file does not choose where outside the current folder to write; use -o for that)")
        grid = {}
        for k, v in d.get("grid", {}).items():
            if not isinstance(v, list) or not v:
                raise ConfigError(f"{source}: grid.{k} must be a non-empty list, got {v!r}")
            grid[k] = _unique(v)   # a repeated value would only repeat points
        d["grid"] = grid
        for i, pt in enumerate(d.get("points", [])):
            if not isinstance(pt, dict):
                raise ConfigError(f"{source}: points[{i}] must be a table of config overrides, got {pt!r}")
        named = set(grid).union(*d.get("points", []))
        if "distill" not in d and named & {"scheme", "pb_fraction"}:
            raise ConfigError(f"{source}: {sorted(named & {'scheme', 'pb_fraction'})} are model axes; a sweep "
                              "over them needs a [distill] table (a co-design sweep, docs/codesign.md)")
        metrics = OBJECTIVE_METRICS
        if "distill" in d:   # a co-design sweep: model axes in the grid, students distilled per model point
            from bitmos.explore.codesign import CODESIGN_METRICS, CODESIGN_OBJECTIVES, DistillBudget

            DistillBudget.from_dict(d["distill"], source=f"{source}: [distill]")
            metrics = OBJECTIVE_METRICS | CODESIGN_METRICS
            d.setdefault("objectives", list(CODESIGN_OBJECTIVES))
        if "objectives" in d:
            from bitmos.explore.pareto import parse_objectives

            if not d["objectives"] or not all(isinstance(o, str) for o in d["objectives"]):
                raise ConfigError(f"{source}: objectives must be a non-empty list of 'max:NAME' / 'min:NAME'")
            try:
                parsed = parse_objectives(d["objectives"])
            except ValueError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            unknown = [name for name, _ in parsed if name not in metrics]
            if unknown:
                raise ConfigError(f"{source}: unknown objective metric(s) {unknown}; known: "
                                  f"{', '.join(sorted(metrics))}")
            d["objectives"] = tuple(d["objectives"])
        return cls(**d, source_dir=source_dir)

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        from bitmos.fileio import read_text_file

        from bitmos.config import _check_not_cut_in_a_number

        p = _spec_path(path)
        text = read_text_file(p, "sweep spec", error=ConfigError)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: cannot parse: {exc}") from None
        if not data:   # an empty (or truncated to nothing) spec must not run the defaults
            raise ConfigError(f"{p}: the sweep spec sets nothing (empty or truncated file?)")
        _check_not_cut_in_a_number(p, text)
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
        return _unique(out)


def point_key(task: dict[str, Any]) -> str:
    blob = json.dumps({k: v for k, v in task.items() if k not in ("index",)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_tasks(spec: SweepSpec, backend: str) -> list[dict[str, Any]]:
    from bitmos.explore.perf import resolve_shape

    from bitmos.compiler import llama_linears
    from bitmos.sim import EnergyTable

    base = spec.base_config().to_dict()
    shape = resolve_shape(spec.model)
    llama_linears(shape)   # a malformed model table fails here, not as every point infeasible
    if spec.energy_table is not None:
        EnergyTable.load(spec.energy_table)   # likewise an unknown energy table
    tasks = []
    for i, ov in enumerate(spec.overrides()):
        cfgd = dict(base, **ov)
        cfgd["name"] = ",".join(f"{k}={v}" for k, v in ov.items()) or base["name"]
        task = {"config": cfgd, "overrides": ov, "shape": shape, "prefill_tokens": spec.prefill_tokens,
                "energy_table": spec.energy_table, "backend": backend, "auto_buffers": spec.auto_buffers,
                "synth": spec.synth, "target": spec.target, "device": spec.device, "top": spec.top,
                "version": SWEEP_VERSION, "estimator": estimator_fingerprint()}
        task["key"] = point_key(task)
        task["index"] = i
        tasks.append(task)
    return tasks


def evaluate_point(task: dict[str, Any]) -> dict[str, Any]:
    """One point: performance, energy and area. Never raises for a bad point: it reports infeasible."""
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
            row.update(luts=s.luts, ffs=s.ffs, brams=s.brams, dsps=s.dsps, fmax_mhz=s.fmax_mhz,
                       area_source=f"synth:{s.part}:{task['top']}")
        row["binary_ops_per_cycle"] = cfg.binary_ops_per_cycle()
    except (Infeasible, BitmosUserError) as exc:
        row["reason"] = str(exc)
        row["config"] = task["config"]
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


# ---- results file ---------------------------------------------------------------------------------

def _row_digest(row: dict[str, Any]) -> str:
    body = {k: v for k, v in row.items() if k != "row_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """key -> row. A line that is torn (a crash mid-write), corrupt or without its checksum is ignored, so its
    point is computed again instead of a changed row being reused."""
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(row, dict) and isinstance(row.get("key"), str) and \
                    row.get("row_sha256") == _row_digest(row):
                out[row["key"]] = {k: v for k, v in row.items() if k != "row_sha256"}
    return out


def append_result(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line (with the SHA-256 of the row) in a single write, then fsync: a point is recorded
    whole or not at all."""
    row = json.loads(json.dumps(row, default=str))   # the row as it will read back
    data = (json.dumps(dict(row, row_sha256=_row_digest(row)), sort_keys=True) + "\n").encode()
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

def _iter_local(tasks, workers: int, fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
    """Rows of ``fn`` (default :func:`evaluate_point`) over ``tasks``, in completion order."""
    fn = fn or evaluate_point
    if workers <= 0:
        for t in tasks:
            yield fn(t)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers, initializer=exit_with_parent, initargs=(os.getpid(),)) as ex:
        futs = [ex.submit(fn, t) for t in tasks]
        try:
            for f in as_completed(futs):
                yield f.result()
        except BaseException:
            for f in futs:
                f.cancel()
            raise


#: Seconds between a worker's checks that the sweep that started it is still alive.
PARENT_CHECK_SECONDS = 1.0


def exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: exit as soon as the sweep process dies.

    A killed sweep (SIGKILL, OOM) cannot tell its pool to stop, and a worker blocked reading its task pipe
    never sees end-of-file (other workers hold the pipe open), so each worker watches its parent itself."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_SECONDS)
            if os.getppid() != parent_pid:   # reparented: the sweep is gone
                os._exit(1)

    threading.Thread(target=watch, name="bitmos-exit-with-parent", daemon=True).start()


def _iter_dask(tasks, scheduler, fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
    fn = fn or evaluate_point
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ConfigError("--scheduler needs dask.distributed: pip install -e '.[dask]'") from None
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futs = [client.submit(fn, t, pure=False, key=f"bitmos-point-{t['key']}") for t in tasks]
        for f in as_completed(futs):
            yield f.result()
    finally:
        if client is not scheduler:
            client.close()


def output_dir(spec: SweepSpec, out: str | Path | None) -> Path:
    """``out``, else the spec's ``out``, else ``sweep-<name>``. The spec's name becomes one folder name: anything
    but letters, digits, '.', '_', '-' is mapped to '_', so a name such as '../../x' cannot reach outside the
    current folder."""
    return Path(out or spec.out or "sweep-" + re.sub(r"[^A-Za-z0-9._-]", "_", spec.name)[:200])


def run_sweep(spec: SweepSpec, *, out: str | Path | None = None, workers: int | None = None,
              scheduler: Any = None, limit: int | None = None, backend: str | None = None,
              log: Callable[[str], None] | None = None, model_side: Any = None) -> dict[str, Any]:
    """Run the points of ``spec`` not yet in ``OUT/results.jsonl``, then write the outputs. A co-design spec (a
    ``[distill]`` table) also trains students: ``model_side`` (:class:`bitmos.explore.codesign.ModelSide`) is the
    model area's part of it, which the application layer supplies (``bitmos sweep``, ``bitmos.app.codesign``)."""
    from bitmos.explore.perf import pick_backend

    t0 = time.perf_counter()
    be = pick_backend(backend or spec.backend)
    outdir = output_dir(spec, out)
    if spec.distill:
        from bitmos.explore.codesign import run_codesign

        if model_side is None:
            raise ConfigError(f"{spec.name}: a co-design spec ([distill]) trains students; run it with bitmos sweep "
                              "or bitmos.app.codesign.run_sweep, which supply the model side")
        return run_codesign(spec, outdir, model_side, workers=spec.workers if workers is None else workers,
                            scheduler=scheduler, limit=limit, backend=be, log=log)
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
               "decode_bound_tokens_per_s", "luts", "ffs", "brams", "dsps", "fmax_mhz", "area_source",
               "binary_ops_per_cycle", "backend", "energy_table", "seconds", "reason")
CONFIG_COLS = ("rows", "cols", "lanes", "act_bits", "acc_bits", "experts", "ext_bw_bits", "clock_mhz",
               "xbuf_kib", "wbuf_kib", "sbuf_kib", "qbuf_kib", "obuf_kib", *LATER_UNITS)


def fill_area(rows: list[dict[str, Any]], target: str) -> None:
    """LUT/FF from the area model fitted on the current records, BRAM from the buffer sizes, for every
    feasible row that was not synthesized (done at output time so new records improve old sweeps)."""
    from bitmos.explore import area as A

    try:
        model, why = A.preferred_model(target), ""
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
                 area_source=f"model:{target}:{model.component}")
        if "dsps" in est:
            r["dsps"] = round(est["dsps"])


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
    write_plot(summary, outdir / "pareto.png",
               (lambda path: plot_pareto(feas, front_keys, path, spec)) if feas else None)
    return summary


def write_plot(summary: dict[str, Any], path: Path, draw: Callable[[Path], Path] | None) -> None:
    """``summary["png"]`` = ``draw(path)``, or ``summary["png_error"]`` when drawing fails (the numbers matter
    more than the picture); without a plot (``draw`` None or failed) an older ``path`` is removed: a plot of an
    earlier run must not sit beside results it does not show."""
    if draw is not None:
        try:
            summary["png"] = str(draw(path))
        except Exception as exc:
            summary["png_error"] = f"{type(exc).__name__}: {exc}"
    if "png" not in summary:
        path.unlink(missing_ok=True)


def plot_pareto(rows: list[dict[str, Any]], front_keys: set[str], path: Path, spec: SweepSpec) -> Path:
    """Decode and prefill panels of tokens/s vs energy per token (log-log), one dot per feasible point
    coloured by area; each panel's 2-D front (max tokens/s, min energy) as a red line through its points
    in x order, drawn on top with markers so a one-point front still shows; the points on the sweep's
    own front (``spec.objectives``) circled. One figure legend below the panels, one shared colorbar."""
    import math
    import numbers

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    from bitmos.explore.pareto import pareto_front

    def positive(v: Any) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0 and math.isfinite(v)

    def model_name(m: Any) -> str:
        if isinstance(m, dict):
            if m.get("name"):
                return str(m["name"])
            dims = ", ".join(f"{k}={m[k]}" for k in ("dim", "n_layers") if k in m)
            return f"model ({dims})" if dims else "custom model"
        p = Path(str(m))
        if p.suffix == ".json":
            return p.parent.name if p.name == "config.json" and p.parent.name else p.stem
        return str(m)

    def tick_text(v: float, _pos: Any = None) -> str:
        if v >= 1e6:
            return f"{v / 1e6:g}M"
        if v >= 1000:
            return f"{v:,.0f}" if v == round(v) else f"{v:,.1f}"
        return f"{v:g}"

    def log_ticks(lo: float, hi: float, most: int) -> list[float]:
        """Round values (1-2-5 style, denser for narrow ranges, sparser for wide ones) inside [lo, hi]:
        as many as fit in ``most`` labels, so no minor '2x10^2 3x10^2' labels crowd each other."""
        k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        for subs in ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 1.5, 2, 3, 5, 7), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):
            ticks = [m * 10.0 ** k for k in range(k0, k1 + 1) for m in subs if lo <= m * 10.0 ** k <= hi]
            if len(ticks) <= most:
                break
        else:
            step = math.ceil(len(ticks) / most)
            ticks = ticks[::step]
        if len(ticks) < 3:  # a range too narrow for round log steps: plain linear ticks inside it
            lin = [t for t in MaxNLocator(nbins=5).tick_values(lo, hi) if lo <= t <= hi and t > 0]
            if len(lin) > len(ticks):
                ticks = lin
        return ticks

    def format_log_axis(axis: Any, lims: tuple[float, float], most: int) -> None:
        axis.set_major_locator(FixedLocator(log_ticks(min(lims), max(lims), most)))
        axis.set_major_formatter(FuncFormatter(tick_text))
        axis.set_minor_locator(LogLocator(subs="auto"))
        axis.set_minor_formatter(NullFormatter())

    name = model_name(spec.model)
    panels = [("decode_tokens_per_s", "decode_uj_per_token", "decode (1 token per step)", "decode"),
              ("prefill_tokens_per_s", "prefill_uj_per_token", f"prefill ({spec.prefill_tokens}-token prompt)",
               "prefill")]
    colour = spec.plot.get("color", "luts")
    cvals = [r.get(colour) for r in rows]
    have_c = bool(rows) and all(positive(v) for v in cvals)
    norm = None
    if have_c:
        lo, hi = min(cvals), max(cvals)
        norm = LogNorm(vmin=lo if lo < hi else lo / 1.1, vmax=hi if lo < hi else hi * 1.1)
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 5.4), layout="constrained")
    sc = None
    handles: dict[str, Any] = {}
    front_sizes: list[tuple[str, int]] = []
    for ax, (x, y, phase, short) in zip(axes, panels):
        idx = [i for i, r in enumerate(rows) if positive(r.get(x)) and positive(r.get(y))]
        xs = [rows[i][x] for i in idx]
        ys = [rows[i][y] for i in idx]
        ax.set_xscale("log")
        ax.set_yscale("log")
        kw = dict(c=[cvals[i] for i in idx], cmap="viridis", norm=norm) if have_c else dict(color="tab:blue")
        sc = ax.scatter(xs, ys, s=26, alpha=0.85, zorder=2, linewidths=0, **kw)
        handles.setdefault("points", Line2D([], [], ls="", marker="o", ms=5, mew=0,
                                            color=plt.get_cmap("viridis")(0.55) if have_c else "tab:blue"))
        fk = [j for j, i in enumerate(idx) if rows[i]["key"] in front_keys]
        circ = ax.scatter([xs[j] for j in fk], [ys[j] for j in fk], s=95, facecolors="none",
                          edgecolors="black", lw=1.0, zorder=3)
        handles.setdefault("front", circ)
        f2 = pareto_front([rows[i] for i in idx], [f"max:{x}", f"min:{y}"])
        pts = sorted((xs[j], ys[j]) for j in f2)
        if pts:
            (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], color="red", lw=1.6, marker="D",
                              ms=5.5, zorder=4, gid="pareto2d")
            handles.setdefault("front2d", line)
        front_sizes.append((short, len(pts)))
        ax.set_xlabel("tokens/s")
        ax.set_ylabel("energy per token (µJ)")
        title = f"{name}: {phase}"
        ax.set_title(title if len(title) <= 44 else f"{name}\n{phase}")
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
        if xs:
            ax.autoscale_view()
            format_log_axis(ax.xaxis, ax.get_xlim(), 6)
            format_log_axis(ax.yaxis, ax.get_ylim(), 7)
    fig.suptitle(f"Sweep '{spec.name}': {len(rows)} feasible design points on base '{spec.base}'", fontsize=11)
    if have_c and sc is not None:
        fig.colorbar(sc, ax=axes, label=f"{'LUTs' if colour == 'luts' else colour} (area)", pad=0.02, aspect=30)
    objs = ", ".join(o.replace(":", " ", 1) for o in spec.objectives)
    n_front = sum(r.get("key") in front_keys for r in rows)
    cname = "LUTs" if colour == "luts" else colour
    labels = {"points": "design point" + (f" (colour = {cname})" if have_c else ""),
              "front2d": "2-D Pareto front, tokens/s vs energy " + (
                  "(1 point per panel: the fastest design is also the most efficient)"
                  if all(n == 1 for _, n in front_sizes)
                  else "(" + "; ".join(f"{p}: {n} point{'s' if n != 1 else ''}" for p, n in front_sizes) + ")"),
              "front": f"Pareto-optimal over {objs} ({n_front} points)"}
    order = [k for k in ("points", "front2d", "front") if k in handles]
    legend_kw = dict(ncol=1, fontsize=9, frameon=False)
    try:
        fig.legend([handles[k] for k in order], [labels[k] for k in order], loc="outside lower center",
                   **legend_kw)
    except ValueError:  # matplotlib < 3.7: no 'outside' placement
        fig.legend([handles[k] for k in order], [labels[k] for k in order], loc="lower center",
                   bbox_to_anchor=(0.5, -0.02), **legend_kw)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
