"""Train every binarization scheme on the same data, steps and seed; write a table into docs/model.md.

Each student starts from the same float teacher's weights and is distilled (FBI-LLM autoregressive distillation)
with identical hyper-parameters; only ``scheme``/``experts`` differ. Reported: parameters, deployed bytes
(1 bit per sign weight, 2 bits per ternary weight, fp16 for everything else, see ``Transformer.packed_bytes``) and
validation perplexity on the built-in corpus's held-out split, with the activation bits given by ``--act-bits``
(default 8).

    python benchmarks/bench_schemes.py --teacher bitmos/model/assets/teacher.safetensors --steps 300
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bitmos.fileio import replace_marked_block
from bitmos.model.checkpoint import load_checkpoint, shipped_path
from bitmos.model.data import encode_corpus, get_tokenizer, load_corpus
from bitmos.model.distill import make_student
from bitmos.model.train import TrainArgs, evaluate, train

#: (run name, scheme, student overrides): pb is the paper's unstructured salient set, pb-channels the structured
#: one the chip runs (whole input channels in int8)
RUNS = [("sign", "sign", {}), ("bitnet", "bitnet", {}), ("fbi", "fbi", {}), ("onebit", "onebit", {}),
        ("pb", "pb", {}), ("pb-channels", "pb", {"pb_salient": "channels"}),
        *((f"mos{e}", "mos", {"experts": e}) for e in (1, 2, 4, 8)), ("ternary", "ternary", {})]


def add_recipe_arguments(ap) -> None:
    """The distillation recipe of the scheme table (teacher, steps, batch, sequence length, lr, activation bits,
    validation tokens): one definition for every benchmark that compares students with it."""
    ap.add_argument("--teacher", default=None, help="teacher checkpoint (default: the shipped one)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--act-bits", default="8", help="1..15 or off")
    ap.add_argument("--eval-tokens", type=int, default=None, help="validation tokens (default: the whole split)")


def distill(student, teacher, teacher_path: Path, args, name: str, seed: int) -> tuple[dict, float]:
    """``student`` distilled from ``teacher`` with the recipe of :func:`add_recipe_arguments` (checkpoint
    ``<work>/<name>.safetensors``) -> (``train``'s result, wall seconds)."""
    targs = TrainArgs(out=f"{args.work}/{name}.safetensors", steps=args.steps, batch_size=args.batch_size,
                      seq_len=args.seq_len, lr=args.lr, warmup=max(1, args.steps // 20), seed=seed,
                      eval_interval=0, ckpt_interval=0, eval_tokens=args.eval_tokens or 10**9,
                      teacher=str(teacher_path), progress=False)
    t0 = time.time()
    torch.manual_seed(seed)
    res = train(student.config, targs, teacher=teacher, model=student)
    return res, time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_arguments(ap)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--only", default=None, help="comma list of run names to do, e.g. mos4,sign")
    ap.add_argument("--work", default="runs/bench", help="folder for the students' checkpoints")
    ap.add_argument("--doc", default="docs/model.md", help="markdown file to update between the bench markers")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--render", default=None, help="only re-render the table from a --json file of an earlier run")
    args = ap.parse_args(argv)
    if args.render:
        rows = json.loads(Path(args.render).read_text())
        table = render(rows, args, Path(args.teacher or shipped_path("teacher")),
                       None if args.act_bits == "off" else int(args.act_bits))
        print(table)
        if args.doc:
            update_doc(Path(args.doc), table)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    act_bits = None if args.act_bits == "off" else int(args.act_bits)

    teacher_path = Path(args.teacher) if args.teacher else shipped_path("teacher")
    teacher, _ = load_checkpoint(teacher_path)
    _, val_text = load_corpus("builtin")
    val = encode_corpus(val_text, get_tokenizer(teacher.config.tokenizer))
    t_eval = evaluate(teacher, val, args.seq_len, args.eval_tokens)
    rows = [{"run": "teacher", "scheme": "float", "experts": "-", "params": teacher.num_params(False),
             "packed_bytes": teacher.packed_bytes(), "ppl": t_eval["ppl"], "acc": t_eval["acc"], "seconds": 0.0}]
    print(f"teacher: ppl {t_eval['ppl']:.3f}", flush=True)
    only = set(args.only.split(",")) if args.only else None
    for name, scheme, overrides in RUNS:
        if only and name not in only:
            continue
        student = make_student(teacher, scheme, **{"experts": 1, **overrides}, act_bits=act_bits)
        res, seconds = distill(student, teacher, teacher_path, args, name, args.seed)
        m = res["model"]
        rows.append({"run": name, "scheme": scheme, "experts": overrides["experts"] if scheme == "mos" else "-",
                     "params": m.num_params(False), "packed_bytes": m.packed_bytes(), "ppl": res["val"]["ppl"],
                     "acc": res["val"]["acc"], "seconds": seconds})
        print(f"{name}: ppl {res['val']['ppl']:.3f} ({seconds:.0f} s)", flush=True)

    table = render(rows, args, teacher_path, act_bits)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.doc:
        update_doc(Path(args.doc), table)
    return 0


def render(rows, args, teacher_path, act_bits) -> str:
    t_ppl = rows[0]["ppl"]
    single = [r["ppl"] for r in rows if r["scheme"] in ("sign", "bitnet", "fbi", "onebit") or r["run"] == "mos1"]
    best_single = min(single) if single else float("nan")
    act = "off (W1A16)" if act_bits is None else f"{act_bits}"
    lines = [f"Setup: teacher `{teacher_path.name}`, every student initialised from it and distilled for "
             f"{args.steps} steps (batch {args.batch_size} x {args.seq_len} tokens, lr {args.lr}, seed {args.seed}),"
             f" activation bits {act}; validation = the built-in corpus's held-out split.",
             "",
             "| run | experts | params | packed bytes | val ppl | ppl / teacher | vs best single-scale | "
             "next-token acc | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = r["ppl"] / t_ppl
        # no single-scale run in this table (--only mos4): nothing to compare with, the cell stays empty
        vs = ("" if r["run"] == "teacher" or not single
              else f"{100 * (best_single - r['ppl']) / best_single:+.2f}%")
        lines.append(f"| {r['run']} | {r['experts']} | {r['params']:,} | {r['packed_bytes']:,} | {r['ppl']:.3f} | "
                     f"{rel:.3f} | {vs} | {r['acc']:.4f} | {r['seconds']:.0f} |")
    lines.append("")
    lines.append(f"Best single-scale scheme (sign, bitnet, fbi, onebit, mos E=1): ppl {best_single:.3f}. "
                 "'vs best single-scale' is the relative ppl improvement (positive = better). 'train s' is wall "
                 "time on a 2-core machine shared with other jobs: not a speed measurement.")
    return "\n".join(lines)


def update_doc(path: Path, table: str) -> None:
    replace_marked_block(path, "bench_schemes", table)


if __name__ == "__main__":
    sys.exit(main())
