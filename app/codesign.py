"""The model area's part of a co-design sweep (`bitmos sweep` with a ``[distill]`` table; docs/codesign.md).

:mod:`bitmos.explore.codesign` plans the sweep, caches its units, joins and writes the results; it joins compiler
and simulator but does not import the model. This module, in the layer that joins areas, supplies what needs the
model (:class:`bitmos.explore.codesign.ModelSide`): the teacher a budget names, the training code's version, and
:func:`run_unit`, which distills a student (:func:`bitmos.model.train.train`, as ``bitmos distill``), evaluates
the teacher, or runs a student's compiled programs on a chip, checked against the integer golden model. It also
hooks ``bitmos sweep`` so the one command runs plain and co-design specs.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from bitmos.config import AcceleratorConfig
from bitmos.errors import BitmosUserError, ConfigError
from bitmos.explore.codesign import DistillBudget, ModelSide, file_sha256

# Modules whose source decides what a student becomes: part of every student's key.
_TRAINING_CODE = ("config", "binarize", "quant", "transformer", "train", "distill", "data", "checkpoint")


def resolve_teacher(budget: DistillBudget, source_dir: str) -> Path:
    """The teacher checkpoint of ``[distill] teacher``: "shipped" (model/assets/teacher.safetensors) or a file,
    relative to the spec's folder."""
    if budget.teacher == "shipped":
        from bitmos.model.checkpoint import shipped_path
        return shipped_path("teacher")
    p = Path(budget.teacher)
    p = p if p.is_absolute() else Path(source_dir) / p
    if not p.is_file():
        from bitmos.fileio import why_not_a_file
        raise ConfigError(f"[distill] teacher = {budget.teacher!r}: {p} {why_not_a_file(p)}")
    return p.resolve()


def training_code_version() -> str:
    """SHA-256 (16 hex) of the training code's source and the torch version: a change retrains every student."""
    import importlib

    import torch

    h = hashlib.sha256(torch.__version__.encode())
    for name in _TRAINING_CODE:
        h.update(Path(importlib.import_module(f"bitmos.model.{name}").__file__).read_bytes())
    return h.hexdigest()[:16]


def train_student(task: dict[str, Any]) -> dict[str, Any]:
    """Distill one student (``bitmos distill`` with the budget) and record its validation perplexity."""
    import torch

    from bitmos.model.checkpoint import trainer_state_path
    from bitmos.model.hf import load_any
    from bitmos.model.train import TrainArgs, train

    t0 = time.perf_counter()
    row: dict[str, Any] = {"key": task["key"], "kind": "student", "model_point": task["model_point"],
                           "seed": task["seed"], "feasible": False, "reason": ""}
    try:
        b = task["budget"]
        torch.set_num_threads(b["threads"])
        teacher, _ = load_any(task["teacher_path"])   # as bitmos distill reads it: with its tokenizer
        mp = task["model_point"]
        # pb: the structured salient set, the one the chip runs (whole input channels in int8)
        config = teacher.config.replace(scheme=mp["scheme"], experts=max(1, mp["experts"]),
                                        act_bits=mp["act_bits"], pb_fraction=mp.get("pb_fraction", 0.1),
                                        pb_salient="channels" if mp["scheme"] == "pb" else "weights")
        args = TrainArgs(out=task["checkpoint"], steps=task["steps"], batch_size=b["batch_size"],
                         seq_len=b["seq_len"], lr=b["lr"], warmup=b["warmup"], seed=task["seed"],
                         eval_interval=0, eval_tokens=b["eval_tokens"], ckpt_interval=0, corpus=b["corpus"],
                         teacher=str(task["teacher_path"]), train_only=b["train"], progress=False)
        res = train(config, args, teacher=teacher, tokenizer=teacher.tokenizer)
        # resuming a finished student is never needed: the key says when to train again
        trainer_state_path(task["checkpoint"]).unlink(missing_ok=True)
        val = res["val"]
        row.update(feasible=True, val_ppl=val["ppl"], val_loss=val["loss"], val_bpb=val["bpb"], val_acc=val["acc"],
                   eval_tokens=val["tokens"], steps=res["step"],
                   trained_tokens=res["step"] * b["batch_size"] * b["seq_len"],
                   checkpoint=Path(task["checkpoint"]).name,
                   checkpoint_sha256=file_sha256(Path(task["checkpoint"])))
    except BitmosUserError as exc:
        row["reason"] = str(exc)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def evaluate_teacher(task: dict[str, Any]) -> dict[str, Any]:
    """The teacher's validation perplexity on the students' validation windows (the quality reference)."""
    import torch

    from bitmos.model.data import encode_corpus, load_corpus
    from bitmos.model.hf import load_any
    from bitmos.model.train import evaluate

    t0 = time.perf_counter()
    b = task["budget"]
    torch.set_num_threads(b["threads"])
    teacher, _ = load_any(task["teacher_path"])
    _, val_text = load_corpus(b["corpus"], None)
    val = encode_corpus(val_text, teacher.tokenizer)
    ev = evaluate(teacher, val, b["seq_len"], b["eval_tokens"], bytes_per_token=len(val_text.encode()) / val.numel())
    return {"key": task["key"], "kind": "teacher", "feasible": True, "val_ppl": ev["ppl"], "val_bpb": ev["bpb"],
            "val_acc": ev["acc"], "eval_tokens": ev["tokens"], "seconds": round(time.perf_counter() - t0, 3)}


def evaluate_student_chip(task: dict[str, Any]) -> dict[str, Any]:
    """The student's own compiled programs on the chip, run and checked by :func:`run_checked`: the plain sweep's
    row fields (:func:`bitmos.explore.perf.flat_row`) prefixed ``student_``. Never raises for a bad point."""
    import torch

    from bitmos.compiler import compile_model
    from bitmos.explore.perf import _grow_buffers, flat_row
    from bitmos.model.checkpoint import load_checkpoint
    from bitmos.model.export import export_model
    from bitmos.semantics import weight_planes
    from bitmos.sim.energy import EnergyTable, default_table
    from bitmos.sim.report import summarize

    t0 = time.perf_counter()
    row: dict[str, Any] = {"key": task["key"], "kind": "chip", "feasible": False, "reason": ""}
    try:
        torch.set_num_threads(1)
        model, _ = load_checkpoint(task["checkpoint"])
        cfg = AcceleratorConfig.from_dict(task["config"], source="co-design point")

        def run(c: AcceleratorConfig) -> dict[str, Any]:
            table = EnergyTable.load(task["energy_table"] or default_table(c))
            export = export_model(model, c)
            phases = {}
            for phase, tokens in (("decode", 1), ("prefill", task["prefill_tokens"])):
                runs = run_checked(export, compile_model(export, c, tokens), tokens, seed=tokens)
                phases[phase] = summarize(runs, table, tokens=tokens)
            return dict(phases, energy_table=table.name)

        if task["auto_buffers"]:
            cfg, phases, grown = _grow_buffers(cfg, run)
        else:
            phases, grown = run(cfg), {}
        # weight bits a token reads: one per weight and weight plane (two for a ternary layer)
        bits = sum(lin.d_in * lin.d_out * weight_planes(cfg, lin.weight_bits)
                   for lin in export_model(model, cfg).linears)
        est = dict(phases, config=cfg.to_dict(), grown=grown, model={"name": "student"},
                   decode_bound_tokens_per_s=cfg.clock_mhz * 1e6 * cfg.ext_bw_bits / bits)
        flat = flat_row(est, task["prefill_tokens"])
        row.update({f"student_{k}": v for k, v in flat.items() if k not in ("backend", "model", "config")})
        row.update(feasible=True, config=flat["config"], student_golden_checked=True)
    except BitmosUserError as exc:
        row["reason"] = str(exc)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def run_checked(export, compiled, tokens: int, *, seed: int) -> list[Any]:
    """Run every program of ``compiled`` (a whole-model compile of ``export``) in the simulator's functional mode
    on seeded int16 inputs and compare every layer's output bit for bit with the golden model; the run results
    (whose cycles and action counts equal the timing mode's) or Infeasible naming the first layer that differs.
    The figures are then those of programs shown to compute the student exactly, not only of their schedule."""
    import numpy as np
    import torch

    from bitmos.compiler import read_layer_output, write_layer_input
    from bitmos.explore.perf import Infeasible
    from bitmos.model.golden import golden_linear
    from bitmos.sim import Simulator

    sim = Simulator(compiled.config)
    rng = np.random.default_rng(seed)
    lins = {lin.name: lin for lin in export.linears}
    mem, runs = compiled.memory, []
    # inputs within +-8.0 in the chip's Q.x_frac_bits format: the range of a normed activation
    bound = min(1 << 15, 8 << compiled.config.x_frac_bits)
    for layer in compiled.layers:
        lin = lins[layer.name]
        x = rng.integers(-bound, bound, size=(tokens, lin.d_in)).astype(np.int16)
        write_layer_input(mem, layer.manifest, x)
        for prog in layer.programs:
            r = sim.run(prog.words, mem)
            if r.error:
                raise Infeasible(f"{layer.name}: the simulator stopped with {r.cause_name}: {r.error_message}")
            mem = r.memory
            runs.append(r)
        got = read_layer_output(mem, layer.manifest).astype(np.int64)
        want = golden_linear(lin, torch.from_numpy(x.astype(np.int64)), compiled.config).numpy().astype(np.int64)
        if not np.array_equal(got, want):
            raise Infeasible(f"{layer.name} (T={tokens}): {int((got != want).sum())} of {got.size} outputs differ "
                             "from the golden model")
    return runs


def run_unit(task: dict[str, Any]) -> dict[str, Any]:
    """One unit of work (picklable for worker processes and Dask): a student, the teacher, a chip or a shape (in
    the scheme's weight format, :func:`bitmos.explore.codesign.evaluate_shape`)."""
    from bitmos.explore.codesign import evaluate_shape

    kind = task.get("kind", "shape")
    if kind == "student":
        return train_student(task)
    if kind == "teacher":
        return evaluate_teacher(task)
    if kind == "chip":
        return evaluate_student_chip(task)
    return dict(evaluate_shape(task), kind="shape")


def model_side(spec) -> ModelSide:
    budget = DistillBudget.from_dict(spec.distill, source=f"{spec.name}: [distill]")
    return ModelSide(teacher=resolve_teacher(budget, spec.source_dir), code_version=training_code_version(),
                     run_unit=run_unit)


def run_sweep(spec, **kw) -> dict[str, Any]:
    """:func:`bitmos.explore.sweep.run_sweep` with the model side a co-design spec needs (a plain spec runs as is)."""
    from bitmos.explore.sweep import run_sweep as explore_run_sweep

    return explore_run_sweep(spec, model_side=model_side(spec) if spec.distill else None, **kw)


def add_commands(sub) -> None:
    """``bitmos sweep`` (registered by bitmos.explore.cli) runs co-design specs through :func:`run_sweep`."""
    from bitmos.explore.cli import sweep_command

    sub.choices["sweep"].set_defaults(func=lambda args: sweep_command(args, run=run_sweep))
