"""Co-design sweeps: model quality and hardware cost of every (model point, hardware point) on one Pareto front.

A co-design spec is a sweep spec (:mod:`bitmos.explore.sweep`, docs/dse.md) with a ``[distill]`` table. Its
``[grid]`` / ``[[points]]`` may then hold the model axes :data:`MODEL_AXES` beside the hardware axes::

    name = "codesign"
    base = "asic32"
    model = "llama-2-7b"                 # the large shape of the estimate (a synthetic layer walk)
    prefill_tokens = 64
    [set]
    ext_mem_mib = 4096
    [grid]
    scheme = ["sign", "onebit", "mos", "ternary"]   # model axes ...
    experts = [1, 2, 4]
    act_bits = [4, 8]
    rows = [8, 16]                       # ... and hardware axes
    [distill]                            # the one, stated budget every student gets (DistillBudget)
    teacher = "shipped"                  # model/assets/teacher.safetensors, or a checkpoint path
    tokens = 32768
    seeds = [1, 2]

A *model point* is (scheme, experts, act_bits[, pb_fraction]) normalized to what the student really has
(:func:`model_point`: a sign student has no experts, a onebit student one set of scales), so the grid's
cross product does not train the same student twice. Every point is three kinds of cached units, each one
line of ``OUT/results.jsonl`` (the sweep's resume file: a finished unit is never recomputed). This module plans,
caches, joins and writes them; the units that need the model (students, the teacher's perplexity, the student on
the chip) run in the application layer, :mod:`bitmos.app.codesign`, given here as a :class:`ModelSide` (this
area does not import the model):

* ``student``: one student per (model point, seed), distilled from the teacher with :func:`bitmos.model.train.train`
  at the budget; its validation perplexity; its checkpoint in ``OUT/students/<key>.safetensors``. The key hashes
  everything that determines the student (:func:`student_key`): the teacher file's SHA-256, the model point, the
  budget, the seed, the corpus and the training code; never a hardware axis, so every hardware point reuses it.
* ``chip``: that student's compiled programs (:func:`bitmos.compiler.compile_model` of its export, materialized so
  the compiler's exactness refusals apply) on the chip (:func:`chip_fields` of the model point over the hardware
  point), run in the simulator's functional mode with every layer's output checked bit for bit against the golden
  model (``bitmos.app.codesign.run_checked``): decode and prefill tokens/s and energy per token (``student_*``). Cycles and action
  counts do not depend on weight values, so the first seed's student stands for all seeds.
* ``shape``: :func:`bitmos.explore.sweep.evaluate_point` of the large shape (``model``) on the same chip: the
  estimate the plain sweep makes, with the model point's experts and act_bits (``shape_*``), so a study can say
  what a scheme costs at 7B. Its key is the plain sweep's point key; a scheme with integer weights (ternary, two
  planes) runs it in its weight format (:func:`evaluate_shape`), the task carrying ``w_bits`` in its key.

Area (``luts``, ``ffs``, ``brams``, ``dsps``) is the area model (:func:`bitmos.explore.sweep.fill_area`) of the
chip the shape estimate settled on (``auto_buffers`` may grow its buffers), including its weight format
(``weight_bits``: the array's R*C*log2(weight_bits) term, fitted on synthesized integer-weight arrays).
``results.csv`` / ``results.json`` hold one row per (model point, hardware point), ``fronts.json`` the 2-D fronts of validation perplexity against
each cost in :data:`FRONT_COSTS` (``pareto.png`` plots them), and ``model_costs.csv`` what each model point costs
against a reference point on the same chips (:func:`model_costs`). docs/codesign.md has a worked study.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from bitmos.config import AcceleratorConfig
from bitmos.errors import ConfigError
from bitmos.fileio import write_json_atomic, write_text_atomic

#: Bumped when a unit's evaluation changes so cached units of older code are not reused: students (and the
#: teacher's perplexity) and chip evaluations separately, so a change in how chips are run keeps the students.
STUDENT_VERSION = 1
CHIP_VERSION = 2          # 2: every program run functionally and checked against the golden model

#: Grid / point keys that describe the student rather than the chip.
MODEL_AXES = ("scheme", "experts", "act_bits", "pb_fraction")

#: Objectives of a co-design spec that names none: quality, decode speed and energy at the large shape, area.
CODESIGN_OBJECTIVES = ("min:val_ppl", "max:shape_decode_tokens_per_s", "min:shape_decode_uj_per_token", "min:luts")

_PHASE_METRICS = ("cycles", "tokens_per_s", "uj_per_token", "stall_frac", "bw_frac", "array_util")
#: Row metrics a co-design objective may name beyond the plain sweep's.
CODESIGN_METRICS = frozenset(
    ["val_ppl", "val_ppl_std", "val_bpb", "val_acc", "ppl_vs_teacher"]
    + [f"{who}_{phase}_{m}" for who in ("student", "shape") for phase in ("decode", "prefill")
       for m in _PHASE_METRICS]
    + ["shape_decode_bound_tokens_per_s"])

#: The 2-D fronts written and plotted: validation perplexity (min) against each of these costs.
FRONT_COSTS = (("max:shape_decode_tokens_per_s", "decode tokens/s"),
               ("max:shape_prefill_tokens_per_s", "prefill tokens/s"),
               ("min:shape_decode_uj_per_token", "decode energy (µJ/token)"),
               ("min:luts", "area (LUTs, area model)"))



# ---- model points and the chip they need ---------------------------------------------------------------

#: Per scheme with a hardware path: the config fields its students need beyond act_bits (and beyond experts =
#: the student's own E, which only BinaryMoS has). A scheme the compiler gains is one line here. The sign
#: schemes' chips are sign-only (``weight_bits = 1``); a ternary (BitNet b1.58) chip takes two weight planes.
CHIP_FIELDS: dict[str, dict[str, Any]] = {"sign": {"experts": 0, "weight_bits": 1},
                                          "onebit": {"experts": 1, "weight_bits": 1},
                                          "mos": {"weight_bits": 1},
                                          "ternary": {"experts": 0, "weight_bits": 2},
                                          "bitnet": {"experts": 0, "weight_bits": 1},
                                          # FBI-LLM's beta . x runs on the router (register BIAS): the
                                          # smallest chip with one has two experts
                                          "fbi": {"experts": 2, "weight_bits": 1},
                                          # structured PB-LLM: its int8 part has per-row scales (E = 1) and
                                          # eight weight planes, whose sums at 7B (LLaMA-2's down_proj keeps
                                          # 1,101 int8 channels) need a 32-bit accumulator
                                          "pb": {"experts": 1, "weight_bits": 8, "acc_bits": 32}}


def scheme_w_bits(scheme: str) -> int:
    """The widest weight format (register WBITS: 0 = sign, 2 = ternary, 8 = PB-LLM's int8 part) a scheme's layers
    run in, as the compiler lowers them (:data:`bitmos.compiler.lower.SCHEME_WEIGHT_BITS`)."""
    from bitmos.compiler.lower import SCHEME_WEIGHT_BITS
    from bitmos.export import INT_WEIGHT_BITS, SPLIT_SCHEMES

    return INT_WEIGHT_BITS if scheme in SPLIT_SCHEMES else SCHEME_WEIGHT_BITS[scheme]


def shape_split(mp: dict[str, Any]) -> dict[str, Any]:
    """What the large-shape estimate of model point ``mp`` needs beyond its weight format: for a split scheme
    (PB-LLM) the scheme and its salient fraction (each linear becomes two chip layers), else nothing."""
    from bitmos.export import SPLIT_SCHEMES

    if mp["scheme"] in SPLIT_SCHEMES:
        return {"scheme": mp["scheme"], "pb_fraction": mp["pb_fraction"]}
    return {}


def chip_fields(scheme: str, experts: int, act_bits: int) -> dict[str, Any]:
    """The accelerator config fields a student of (scheme, experts, act_bits) compiles for: a sign student has no
    scale experts (E = 0), a onebit student one scale set (E = 1), a BinaryMoS student its own E, all on a
    sign-only chip (weight_bits = 1); a ternary student E = 0 on a chip with weight_bits = 2. The chip quantizes
    to the student's activation bits. A scheme the compiler has no hardware path for is a ConfigError naming the
    compiler's reason, and so is a ternary student at act_bits = 1 (the chip has no such datapath)."""
    from bitmos.compiler.lower import SUPPORTED_SCHEMES, UNSUPPORTED_SCHEMES

    if scheme not in SUPPORTED_SCHEMES:
        why = UNSUPPORTED_SCHEMES.get(scheme, "not a scheme the model zoo knows")
        raise ConfigError(f"scheme {scheme!r} has no hardware path ({why}); the compiler supports "
                          f"{', '.join(SUPPORTED_SCHEMES)}", field="scheme")
    if scheme not in CHIP_FIELDS:
        raise ConfigError(f"scheme {scheme!r} compiles, but the co-design sweep does not know its chip yet "
                          "(add it to bitmos.explore.codesign.CHIP_FIELDS)", field="scheme")
    out = {"experts": experts, "act_bits": act_bits, **CHIP_FIELDS[scheme]}
    if out["weight_bits"] >= 2 and act_bits < 2:   # the config's own rule, said for the scheme
        raise ConfigError(f"scheme {scheme!r} at act_bits = {act_bits}: its {out['weight_bits']}-bit integer "
                          "weight planes need act_bits >= 2 (the PE's AND form; 1-bit activations take the XNOR "
                          "form, sign weights only); give ternary points act_bits 2, 4 or 8 ([[points]] when "
                          "the grid's act_bits axis has 1 for the other schemes)", field="act_bits")
    return out


def model_point(override: dict[str, Any], base: AcceleratorConfig, source: str) -> dict[str, Any]:
    """The student an override describes: scheme (required), experts and act_bits (default: the base config's),
    pb_fraction (kept for ``pb`` only), normalized to what the student has, so equal students compare equal."""
    from bitmos.compiler.lower import SUPPORTED_SCHEMES, UNSUPPORTED_SCHEMES

    schemes = [*SUPPORTED_SCHEMES, *(s for s in UNSUPPORTED_SCHEMES if s != "float")]   # the model zoo's
    scheme = override.get("scheme")
    if scheme is None:
        raise ConfigError(f"{source}: a co-design point needs a scheme (grid.scheme or the point's scheme = ...)")
    if not isinstance(scheme, str) or scheme not in schemes:
        raise ConfigError(f"{source}: scheme = {scheme!r}; known: {', '.join(schemes)}")
    experts = override.get("experts", base.experts)
    act_bits = override.get("act_bits", base.act_bits)
    for name, value, lo, hi in (("experts", experts, 1, 8), ("act_bits", act_bits, 1, 15)):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{source}: {name} = {value!r} must be an integer in {lo}..{hi}")
    point: dict[str, Any] = {"scheme": scheme, "act_bits": act_bits}
    try:
        point["experts"] = chip_fields(scheme, experts, act_bits)["experts"]
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}", field="scheme") from None
    if scheme == "pb":   # the chip runs structured PB-LLM: the fraction of input channels kept in int8
        frac = override.get("pb_fraction", 0.1)
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 <= frac < 1.0:
            raise ConfigError(f"{source}: pb_fraction = {frac!r} must be a number in [0, 1)")
        point["pb_fraction"] = float(frac)
    return point


def point_label(mp: dict[str, Any]) -> str:
    """``mos E4 A8``, ``sign A4``, ``pb 0.1 A8``: short names for tables and plots."""
    e = f" E{mp['experts']}" if mp["scheme"] == "mos" else ""
    f = f" {mp['pb_fraction']:g}" if mp["scheme"] == "pb" else ""
    return f"{mp['scheme']}{e}{f} A{mp['act_bits']}"


# ---- the distillation budget ---------------------------------------------------------------------------

@dataclass
class DistillBudget:
    """What every student of a co-design sweep gets: the same teacher, corpus and budget (``[distill]``)."""
    teacher: str = "shipped"          # "shipped" (model/assets/teacher.safetensors) or a checkpoint path
    tokens: int = 32768               # training tokens; steps = ceil(tokens / (batch_size x seq_len))
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 1e-3
    warmup: int = 2
    seeds: list[int] = field(default_factory=lambda: [1])
    corpus: str = "builtin"
    eval_tokens: int = 16384          # validation tokens of every student's (and the teacher's) perplexity
    train: str = "all"                # "all" | "scales" (bitmos distill --train)
    threads: int = 1                  # torch threads per training worker

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "[distill]") -> "DistillBudget":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; known: {', '.join(known)}")
        kinds = {"teacher": str, "corpus": str, "train": str, "lr": (int, float), "seeds": list}
        for k, v in d.items():
            want = kinds.get(k, int)
            if isinstance(v, bool) or not isinstance(v, want):
                raise ConfigError(f"{source}: {k} = {v!r} has the wrong type")
        b = cls(**d)
        for k in ("tokens", "batch_size", "seq_len", "eval_tokens", "threads"):
            if getattr(b, k) < 1:
                raise ConfigError(f"{source}: {k} = {getattr(b, k)} must be >= 1")
        if b.warmup < 0 or not b.lr > 0:
            raise ConfigError(f"{source}: warmup must be >= 0 and lr > 0")
        if not b.seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in b.seeds) \
                or len(set(b.seeds)) != len(b.seeds):
            raise ConfigError(f"{source}: seeds = {b.seeds!r} must be a non-empty list of distinct integers")
        if b.train not in ("all", "scales"):
            raise ConfigError(f"{source}: train = {b.train!r} must be 'all' or 'scales'")
        return b

    @property
    def steps(self) -> int:
        return -(-self.tokens // (self.batch_size * self.seq_len))   # the budget is spent in whole steps



def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _key(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def student_key(task: dict[str, Any]) -> str:
    """The hash of everything that determines a student; the checkpoint path is where it goes, not what it is."""
    return _key({k: v for k, v in task.items() if k not in ("key", "kind", "checkpoint", "teacher_path")})


# ---- planning --------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """Every unit a co-design spec needs, and the (model point, hardware point) pairs they make up."""
    teacher: dict[str, Any]
    students: list[dict[str, Any]]                 # one per (model point, seed)
    chips: list[dict[str, Any]]                    # one per pair (the first seed's student)
    shapes: list[dict[str, Any]]                   # one per distinct chip config (the plain sweep's tasks)
    pairs: list[dict[str, Any]]                    # model point, hardware overrides and the unit keys

    def units(self) -> list[dict[str, Any]]:
        return [self.teacher, *self.students, *self.chips, *self.shapes]


def split_override(ov: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model axes, hardware axes) of one grid / point override."""
    return ({k: v for k, v in ov.items() if k in MODEL_AXES},
            {k: v for k, v in ov.items() if k not in MODEL_AXES})


@dataclass(frozen=True)
class ModelSide:
    """What a co-design sweep needs from the model area, given by the application layer (bitmos.app.codesign):
    this area joins compiler and simulator but does not import the model (tests/core/test_layering.py)."""
    teacher: Path                                      # the teacher checkpoint the budget names
    code_version: str                                  # hash of the training code: part of every student's key
    run_unit: Callable[[dict[str, Any]], dict[str, Any]]   # picklable: runs any unit (student, teacher, chip, shape)


def make_plan(spec, outdir: Path, backend: str, model_side: ModelSide) -> Plan:
    """All units of ``spec``; every model point and chip config is checked here, before anything runs."""
    from bitmos.explore.sweep import SweepSpec, make_tasks

    budget = DistillBudget.from_dict(spec.distill, source=f"{spec.name}: [distill]")
    teacher_path = model_side.teacher
    teacher_sha = file_sha256(teacher_path)
    code = model_side.code_version
    base = spec.base_config()
    students_dir = (outdir / "students").resolve()
    common = {"teacher_sha256": teacher_sha, "budget": {k: v for k, v in asdict(budget).items()
                                                        if k not in ("teacher", "seeds")},
              "code": code, "version": STUDENT_VERSION}
    teacher = {"kind": "teacher", "teacher_path": str(teacher_path), **common}
    teacher["key"] = "teacher-" + _key({k: v for k, v in teacher.items() if k != "teacher_path"})
    students: dict[str, dict[str, Any]] = {}
    chips: dict[str, dict[str, Any]] = {}
    pairs, shape_overrides = [], []
    for i, ov in enumerate(spec.overrides()):
        where = f"{spec.name}: point {i} {ov}"
        model_ov, hw_ov = split_override(ov)
        mp = model_point(model_ov, base, where)
        cfg_ov = dict(hw_ov, **chip_fields(mp["scheme"], mp["experts"], mp["act_bits"]))
        cfgd = dict(base.to_dict(), **cfg_ov)
        cfgd["name"] = ",".join(f"{k}={v}" for k, v in cfg_ov.items())
        try:
            AcceleratorConfig.from_dict(cfgd, source=where)   # a bad hardware value fails before any training
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}", field=exc.field) from None
        seed_keys = []
        for seed in budget.seeds:
            st = {"kind": "student", "model_point": mp, "seed": seed, "steps": budget.steps,
                  "teacher_path": str(teacher_path), **common}
            st["key"] = "student-" + student_key(st)
            st["checkpoint"] = str(students_dir / f"{st['key']}.safetensors")
            students.setdefault(st["key"], st)
            seed_keys.append(st["key"])
        chip = {"kind": "chip", "student": seed_keys[0], "checkpoint": students[seed_keys[0]]["checkpoint"],
                "config": cfgd, "prefill_tokens": spec.prefill_tokens, "energy_table": spec.energy_table,
                "auto_buffers": spec.auto_buffers, "version": CHIP_VERSION}
        chip["key"] = "chip-" + _key({k: v for k, v in chip.items() if k != "checkpoint"})
        chips.setdefault(chip["key"], chip)
        shape_overrides.append(cfg_ov)
        pairs.append({"model_point": mp, "hardware": hw_ov, "chip_overrides": cfg_ov, "students": seed_keys,
                      "chip": chip["key"], "w_bits": scheme_w_bits(mp["scheme"]), "split": shape_split(mp)})
    # the large-shape estimates are the plain sweep's own tasks (same keys: a plain sweep's results are reusable),
    # in the scheme's weight format: a sign-weight estimate (w_bits 0) is the plain sweep's task as it is, an
    # integer-weight one (ternary: w_bits 2) that task with its w_bits, hashed into its key
    shape_spec = SweepSpec(**{f.name: getattr(spec, f.name) for f in fields(SweepSpec)
                              if f.name not in ("grid", "points", "distill")}, points=shape_overrides)
    by_ov = {json.dumps(t["overrides"], sort_keys=True): t for t in make_tasks(shape_spec, backend)}
    shapes: dict[tuple[str, int, str], dict[str, Any]] = {}
    unique: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        ov, w_bits = json.dumps(pair["chip_overrides"], sort_keys=True), pair["w_bits"]
        split = pair.pop("split")
        at = (ov, w_bits, json.dumps(split, sort_keys=True))
        if at not in shapes:
            shapes[at] = shape_task(by_ov[ov], w_bits, split)
        pair["shape"] = shapes[at]["key"]
        pair["key"] = _key({k: pair[k] for k in ("students", "chip", "shape")})
        unique.setdefault(pair["key"], pair)   # sign x experts {1, 2, 4} is one student on one chip: one row
    return Plan(teacher, list(students.values()), list(chips.values()), list(shapes.values()),
                list(unique.values()))


def shape_task(task: dict[str, Any], w_bits: int, split: dict[str, Any] | None = None) -> dict[str, Any]:
    """The plain sweep's task ``task`` with the weights in format ``w_bits``: the task itself for sign weights
    (0), else a copy carrying ``w_bits`` (and a split scheme's :func:`shape_split`) whose key hashes it, so a sign,
    a ternary and a PB-LLM estimate of one config are three units."""
    from bitmos.explore.sweep import point_key

    if not w_bits and not split:
        return task
    out = {k: v for k, v in task.items() if k != "key"}
    out["w_bits"] = w_bits
    out.update(split or {})
    out["key"] = point_key(out)
    return out


def evaluate_shape(task: dict[str, Any]) -> dict[str, Any]:
    """One shape unit: :func:`bitmos.explore.sweep.evaluate_point` for sign weights; for integer weights
    (``task["w_bits"]``) the same estimate with the weights in that format, and for a split scheme
    (``task["scheme"]``, PB-LLM) with its two chip layers per linear. Never raises for a bad point.
    ``synth`` is not run here: the co-design join takes area from the area model (:func:`join_rows`)."""
    from bitmos.errors import BitmosUserError
    from bitmos.explore.perf import Infeasible, evaluate
    from bitmos.explore.sweep import evaluate_point

    w_bits = task.get("w_bits", 0)
    if not w_bits:
        return evaluate_point(task)
    t0 = time.perf_counter()
    row: dict[str, Any] = {"key": task["key"], "overrides": task["overrides"], "w_bits": w_bits, "feasible": False,
                           "reason": ""}
    try:
        cfg = AcceleratorConfig.from_dict(task["config"], source="point")
        res = evaluate(cfg, task["shape"], prefill_tokens=task["prefill_tokens"], energy_table=task["energy_table"],
                       backend=task["backend"], auto_buffers=task["auto_buffers"], w_bits=w_bits,
                       scheme=task.get("scheme"), pb_fraction=task.get("pb_fraction", 0.1))
        row.update(res, feasible=True)
        row["binary_ops_per_cycle"] = AcceleratorConfig.from_dict(res["config"]).binary_ops_per_cycle()
    except (Infeasible, BitmosUserError) as exc:
        row["reason"] = str(exc)
        row["config"] = task["config"]
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def _student_ready(row: dict[str, Any] | None, task: dict[str, Any]) -> bool:
    """A student counts as done when its row is recorded and (if it trained) its checkpoint is intact: the
    chips need the weights, so a deleted or changed checkpoint is trained again."""
    if row is None:
        return False
    if not row.get("feasible"):
        return True
    p = Path(task["checkpoint"])
    return p.is_file() and file_sha256(p) == row.get("checkpoint_sha256")


# ---- running -----------------------------------------------------------------------------------------------

def run_codesign(spec, outdir: Path, model_side: ModelSide, *, workers: int, scheduler: Any = None,
                 limit: int | None = None, backend: str = "sim",
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train the missing students (in parallel), then evaluate the missing chip and shape units, then write the
    joined rows, the fronts and the plot. ``limit`` caps the units computed now (students first)."""
    from bitmos.explore.sweep import _iter_dask, _iter_local, append_result, read_results

    t0 = time.perf_counter()
    say = log or (lambda m: None)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "students").mkdir(exist_ok=True)
    results_path = outdir / "results.jsonl"
    plan = make_plan(spec, outdir, backend, model_side)
    reference = reference_label(spec, plan)
    done = read_results(results_path)
    budget = DistillBudget.from_dict(spec.distill)
    n_units = len(plan.units())
    say(f"co-design {spec.name}: {len(plan.pairs)} (model, hardware) points = {len(plan.students)} students "
        f"({len({json.dumps(s['model_point'], sort_keys=True) for s in plan.students})} model points x "
        f"{len(budget.seeds)} seeds, {budget.steps} steps of {budget.batch_size}x{budget.seq_len} tokens each), "
        f"{len(plan.chips)} chip and {len(plan.shapes)} shape evaluations; results in {results_path}")
    skipped = computed = 0
    budget_left = [limit if limit is not None else math.inf]

    def run_stage(name: str, tasks: list[dict[str, Any]], ready: Callable[[dict[str, Any]], bool]) -> None:
        nonlocal skipped, computed
        todo = [t for t in tasks if not ready(t)]
        skipped += len(tasks) - len(todo)
        if budget_left[0] < len(todo):
            todo = todo[:int(budget_left[0])]
        budget_left[0] -= len(todo)
        if not todo:
            return
        say(f"  {name}: {len(todo)} to run, {len(tasks) - len(todo)} cached")
        run = model_side.run_unit
        it = _iter_dask(todo, scheduler, run) if scheduler else _iter_local(todo, workers, run)
        for row in it:
            append_result(results_path, row)
            done[row["key"]] = row
            computed += 1
            say(f"    {_describe(row)} ({row['seconds']:.1f} s)")

    by_key = {t["key"]: t for t in plan.students}
    run_stage("students", [plan.teacher, *plan.students],
              lambda t: _student_ready(done.get(t["key"]), t) if t["kind"] == "student" else t["key"] in done)
    ok = {k for k, t in by_key.items() if _student_ready(done.get(k), t) and done[k].get("feasible")}
    # a chip whose student is missing (limit) or failed cannot run yet / at all
    chips = [c for c in plan.chips if c["student"] in ok]
    run_stage("chips and shapes", [*chips, *plan.shapes], lambda t: t["key"] in done)
    rows = join_rows(plan, done)
    summary = write_codesign_outputs(spec, rows, done.get(plan.teacher["key"]), outdir, reference)
    summary.update(points=len(plan.pairs), units=n_units, computed=computed, skipped=skipped, backend=backend,
                   seconds=time.perf_counter() - t0, results=str(results_path))
    return summary


def _describe(row: dict[str, Any]) -> str:
    if not row.get("feasible"):
        return f"{row['key']}: infeasible: {row.get('reason', '')[:120]}"
    if row["kind"] == "student":
        return f"{row['key']} {point_label(row['model_point'])} seed {row['seed']}: val ppl {row['val_ppl']:.3f}"
    if row["kind"] == "teacher":
        return f"teacher: val ppl {row['val_ppl']:.3f}"
    pre = "student_" if row["kind"] == "chip" else ""
    return (f"{row['key']} {row['kind']}: decode {row[pre + 'decode_tokens_per_s']:.4g} tok/s, "
            f"{row[pre + 'decode_uj_per_token']:.4g} uJ/tok, prefill {row[pre + 'prefill_tokens_per_s']:.4g} tok/s")


# ---- joining and outputs ------------------------------------------------------------------------------------

_SHAPE_FIELDS = tuple(f"{phase}_{m}" for phase in ("decode", "prefill") for m in _PHASE_METRICS) + (
    "decode_bound_tokens_per_s",)


def join_rows(plan: Plan, done: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model point, hardware point) whose units are all recorded: quality over the seeds, the
    student's chip figures, the large shape's figures and its config (for the area model)."""
    teacher = done.get(plan.teacher["key"])
    rows = []
    for pair in plan.pairs:
        studs = [done.get(k) for k in pair["students"]]
        chip, shape = done.get(pair["chip"]), done.get(pair["shape"])
        if any(s is None for s in studs) or chip is None or shape is None:
            continue   # not computed yet (--limit, or an interrupted run): the next run fills it in
        mp = pair["model_point"]
        row: dict[str, Any] = {"key": pair["key"], "label": point_label(mp), **mp, "w_bits": pair["w_bits"],
                               "hardware": pair["hardware"],
                               "overrides": pair["chip_overrides"], "feasible": False, "reason": ""}
        bad = [u for u in (*studs, chip, shape) if not u.get("feasible")]
        if bad:
            row["reason"] = f"{bad[0]['key']}: {bad[0].get('reason', '')}"
            row["config"] = chip.get("config") or shape.get("config")
            rows.append(row)
            continue
        ppls = [s["val_ppl"] for s in studs]
        mean = sum(ppls) / len(ppls)
        row.update(feasible=True, val_ppl=mean, val_ppl_seeds=ppls,
                   val_ppl_std=math.sqrt(sum((p - mean) ** 2 for p in ppls) / (len(ppls) - 1)) if len(ppls) > 1
                   else 0.0,
                   val_bpb=sum(s["val_bpb"] for s in studs) / len(studs),
                   val_acc=sum(s["val_acc"] for s in studs) / len(studs),
                   trained_tokens=studs[0]["trained_tokens"], seeds=[s["seed"] for s in studs])
        if teacher is not None:
            row["ppl_vs_teacher"] = mean / teacher["val_ppl"]
        row.update({k: v for k, v in chip.items() if k.startswith("student_")})
        row.update({f"shape_{k}": shape[k] for k in _SHAPE_FIELDS if k in shape})
        row.update(shape_model=shape.get("model"), energy_table=shape.get("energy_table"),
                   config=shape["config"], student_config=chip["config"])
        rows.append(row)
    return rows


CSV_COLUMNS = ("key", "label", "scheme", "experts", "act_bits", "w_bits", "weight_bits", "rows", "cols", "lanes", "ext_bw_bits",
               "feasible", "val_ppl", "val_ppl_std", "ppl_vs_teacher", "student_decode_tokens_per_s",
               "student_prefill_tokens_per_s", "student_decode_uj_per_token", "shape_decode_tokens_per_s",
               "shape_prefill_tokens_per_s", "shape_decode_uj_per_token", "shape_prefill_uj_per_token",
               "luts", "ffs", "brams", "dsps", "area_source", "reason")


#: What :func:`model_costs` compares between model points on the same chip.
COST_METRICS = ("val_ppl", "shape_decode_tokens_per_s", "shape_prefill_tokens_per_s", "shape_decode_uj_per_token",
                "luts", "student_decode_tokens_per_s", "student_prefill_tokens_per_s", "student_decode_uj_per_token")


def reference_label(spec, plan: Plan) -> str:
    """The model point the cost table compares against: ``plot.reference`` (a label such as "mos E4 A8"), else
    the spec's first model point."""
    labels = list(dict.fromkeys(point_label(p["model_point"]) for p in plan.pairs))
    ref = spec.plot.get("reference", labels[0] if labels else "")
    if labels and ref not in labels:
        raise ConfigError(f"{spec.name}: plot.reference = {ref!r} is not a model point of this sweep; "
                          f"have {', '.join(labels)}")
    return ref


def model_costs(rows: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Per model point: its perplexity and, against ``reference`` on the same hardware point, the mean relative
    change (%) of every :data:`COST_METRICS` figure over the hardware points both have: "this scheme costs X %
    perplexity at small scale and Y % tokens/s, Z % energy, W % LUTs at the large shape"."""
    feas = [r for r in rows if r.get("feasible")]

    def hw(r: dict[str, Any]) -> str:
        return json.dumps(r["hardware"], sort_keys=True)

    base = {hw(r): r for r in feas if r["label"] == reference}
    out = []
    for label in dict.fromkeys(r["label"] for r in feas):
        mine = [r for r in feas if r["label"] == label and hw(r) in base]
        if not mine:
            continue
        entry: dict[str, Any] = {"label": label, "reference": reference, "hardware_points": len(mine),
                                 "val_ppl": mine[0]["val_ppl"], "val_ppl_std": mine[0]["val_ppl_std"]}
        for m in COST_METRICS:
            entry[f"{m}_pct"] = sum(100 * (r[m] / base[hw(r)][m] - 1) for r in mine) / len(mine)
        out.append(entry)
    return out


def fronts(rows: list[dict[str, Any]], objectives) -> dict[str, list[str]]:
    """Keys on the spec's front (``all``) and on each 2-D front of validation perplexity against a cost."""
    from bitmos.explore.pareto import pareto_front

    feas = [r for r in rows if r.get("feasible")]
    out = {"all": sorted(feas[i]["key"] for i in pareto_front(feas, objectives))}
    for cost, _ in FRONT_COSTS:
        out[cost.split(":", 1)[1]] = sorted(feas[i]["key"] for i in pareto_front(feas, ["min:val_ppl", cost]))
    return out


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    import csv

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def write_codesign_outputs(spec, rows: list[dict[str, Any]], teacher: dict[str, Any] | None,
                           outdir: Path, reference: str) -> dict[str, Any]:
    from bitmos.explore.sweep import fill_area, write_plot

    fill_area(rows, spec.target)
    front = fronts(rows, spec.objectives)
    _write_csv(outdir / "results.csv", [*CSV_COLUMNS, *("front_" + k for k in front)],
               [[*(r.get(c, (r.get("config") or {}).get(c)) for c in CSV_COLUMNS),
                 *(r["key"] in front[k] for k in front)] for r in rows])
    costs = model_costs(rows, reference)
    cols = ["label", "reference", "hardware_points", "val_ppl", "val_ppl_std", *(f"{m}_pct" for m in COST_METRICS)]
    _write_csv(outdir / "model_costs.csv", cols, [[c.get(k) for k in cols] for c in costs])
    summary: dict[str, Any] = {"name": spec.name, "objectives": list(spec.objectives),
                               "teacher_val_ppl": teacher["val_ppl"] if teacher else None,
                               "infeasible": sum(not r.get("feasible") for r in rows), "pareto": len(front["all"]),
                               "pareto_keys": front["all"], "csv": str(outdir / "results.csv"),
                               "json": str(outdir / "results.json"), "fronts": str(outdir / "fronts.json"),
                               "model_costs": str(outdir / "model_costs.csv")}
    write_json_atomic(outdir / "results.json", dict(summary, rows=rows, model_costs=costs))
    write_json_atomic(outdir / "fronts.json", {k: [_front_entry(r) for r in rows if r["key"] in keys]
                                               for k, keys in front.items()})
    feas = [r for r in rows if r.get("feasible")]
    write_plot(summary, outdir / "pareto.png", (lambda path: plot_codesign(feas, front, path, spec)) if feas else None)
    return summary


def _front_entry(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r.get(k) for k in ("key", "label", "hardware", "val_ppl", "val_ppl_std", "shape_decode_tokens_per_s",
                                  "shape_prefill_tokens_per_s", "shape_decode_uj_per_token", "luts")}


def plot_codesign(rows: list[dict[str, Any]], front: dict[str, list[str]], path: Path, spec) -> Path:
    """Validation perplexity (y) against each cost of :data:`FRONT_COSTS` (x, log), one colour per scheme, a
    marker per activation width; each panel's 2-D front as a red line; the spec's own front circled."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    schemes = sorted({r["scheme"] for r in rows})
    colours = {s: plt.get_cmap("tab10")(i) for i, s in enumerate(schemes)}
    bits = sorted({r["act_bits"] for r in rows})
    markers = {b: m for b, m in zip(bits, "osD^v<>p*h")}
    fig, axes = plt.subplots(2, 2, figsize=(10.5, 8.2), layout="constrained")
    for ax, (cost, label) in zip(axes.flat, FRONT_COSTS):
        metric = cost.split(":", 1)[1]
        for r in rows:
            ax.scatter(r[metric], r["val_ppl"], color=colours[r["scheme"]], marker=markers[r["act_bits"]], s=30,
                       alpha=0.8, zorder=2, linewidths=0)
        on = sorted((r[metric], r["val_ppl"]) for r in rows if r["key"] in front[metric])
        ax.plot([p[0] for p in on], [p[1] for p in on], color="red", lw=1.2, marker="D", ms=4, zorder=3)
        allf = [r for r in rows if r["key"] in front["all"]]
        ax.scatter([r[metric] for r in allf], [r["val_ppl"] for r in allf], s=90, facecolors="none",
                   edgecolors="black", lw=0.9, zorder=4)
        xs = [r[metric] for r in rows]
        if min(xs) > 0 and max(xs) / min(xs) > 5:   # log only where the range spans orders of magnitude
            ax.set_xscale("log")
            # labels at 1, 2, 5 x 10^n in the formatter below, none on the minor ticks (they overlap)
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda v, _pos: f"{v / 1000:,.0f}k" if v >= 10000 else f"{v:,.0f}" if v >= 100 else f"{v:g}"))
        ax.set_xlabel(label + ("" if metric == "luts" else f" at {rows[0].get('shape_model') or 'the shape'}"))
        ax.set_ylabel("student validation perplexity")
        ax.grid(True, alpha=0.3, which="both")
    handles = [Line2D([], [], ls="", marker="o", color=colours[s], label=s) for s in schemes]
    handles += [Line2D([], [], ls="", marker=markers[b], color="grey", label=f"A{b}") for b in bits]
    handles += [Line2D([], [], color="red", label="2-D front (perplexity vs this cost)"),
                Line2D([], [], ls="", marker="o", mfc="none", mec="black", ms=9,
                       label="on the front of " + ", ".join(spec.objectives))]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"Co-design sweep '{spec.name}': {len(rows)} (student, chip) points on base '{spec.base}'",
                 fontsize=11)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
