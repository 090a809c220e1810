"""PB-LLM's salient set: the paper's unstructured top-|W| weights against whole input channels, at equal fraction.

PB-LLM (Shang et al., "PB-LLM: Partially Binarized Large Language Models", arXiv:2310.00034, 2023) keeps a small
fraction of salient weights in 8 bit and binarizes the rest. ``pb_salient = "weights"`` is the paper's unstructured
set (the top ``pb_fraction`` of |W|: a sparse int8 correction on hardware); ``"channels"`` is a structured variant
(the round(pb_fraction * d_in) input channels of largest max |W|, every weight of them int8: a second, multi-bit
weight pass over a subset of the K dimension). Both students start from the same float teacher's weights and are
distilled exactly as in ``bench_schemes.py`` (same steps, batch, sequence length, learning rate, warm-up, data and
seeds); only ``pb_salient`` differs. Reported per (fraction, variant): the weights really kept int8, validation
perplexity before training (the init alone) and after (mean +- half the range over the seeds, every seed listed),
its ratio to the teacher, structured / unstructured, and packed bytes (``binarize.packed_bytes``) per block-linear
weight and for the whole model.

    python benchmarks/bench_pb_salient.py --steps 300 --threads 1 --doc ""
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bitmos.fileio import replace_marked_block
from bitmos.model.binarize import packed_bytes
from bitmos.model.checkpoint import load_checkpoint, shipped_path
from bitmos.model.data import encode_corpus, get_tokenizer, load_corpus
from bitmos.model.distill import make_student
from bitmos.model.train import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_schemes import add_recipe_arguments, distill  # noqa: E402  (the scheme table's recipe, one definition)

VARIANTS = ("weights", "channels")
MARKER = "bench_pb_salient"


def linear_stats(model) -> dict:
    """Salient (int8) fraction and packed bytes of the block linears."""
    n = salient = nbytes = 0
    for _, m in model.block_linears():
        n += m.weight.numel()
        salient += int(m.salient_mask().sum())
        nbytes += packed_bytes(m)
    return {"salient_frac": salient / n, "linear_bytes": nbytes, "linear_weights": n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_arguments(ap)
    ap.add_argument("--fractions", default="0.1,0.05", help="comma list of pb_fraction values")
    ap.add_argument("--seeds", default="1337,1338", help="comma list of training seeds (1337 = bench_schemes')")
    ap.add_argument("--work", default="runs/bench_pb", help="folder for the students' checkpoints")
    ap.add_argument("--doc", default="docs/model.md", help="markdown file to update between the "
                    f"<!-- {MARKER}:begin/end --> markers ('' = do not write)")
    ap.add_argument("--json", default=None, help="also write the rows here (rewritten after every run)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--render", default=None, help="only re-render the table from a --json file of an earlier run")
    args = ap.parse_args(argv)
    act_bits = None if args.act_bits == "off" else int(args.act_bits)
    teacher_path = Path(args.teacher) if args.teacher else shipped_path("teacher")
    if args.render:
        rows = json.loads(Path(args.render).read_text())
        return _emit(rows, args, teacher_path, act_bits)
    if args.threads:
        torch.set_num_threads(args.threads)
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    teacher, _ = load_checkpoint(teacher_path)
    _, val_text = load_corpus("builtin")
    val = encode_corpus(val_text, get_tokenizer(teacher.config.tokenizer))
    t0 = time.time()
    t_eval = evaluate(teacher, val, args.seq_len, args.eval_tokens)
    rows = [{"run": "teacher", "ppl": t_eval["ppl"], "acc": t_eval["acc"], "packed_bytes": teacher.packed_bytes(),
             "eval_tokens": t_eval["tokens"], "seconds": time.time() - t0}]
    print(f"teacher: ppl {t_eval['ppl']:.4f} ({t_eval['tokens']} tokens)", flush=True)
    for frac in fractions:
        for variant in VARIANTS:
            student = make_student(teacher, "pb", act_bits=act_bits, pb_fraction=frac, pb_salient=variant)
            init = evaluate(student, val, args.seq_len, args.eval_tokens)
            stats = linear_stats(student)
            rows.append({"run": "init", "fraction": frac, "variant": variant, "ppl": init["ppl"],
                         "acc": init["acc"], "packed_bytes": student.packed_bytes(), **stats})
            print(f"init {variant} {frac}: ppl {init['ppl']:.4f}, int8 fraction {stats['salient_frac']:.4f}, "
                  f"{stats['linear_bytes'] / stats['linear_weights']:.4f} B/weight", flush=True)
            _save(rows, args)
    for frac in fractions:
        for seed in seeds:
            for variant in VARIANTS:
                name = f"pb-{variant}-{frac}-s{seed}"
                student = make_student(teacher, "pb", act_bits=act_bits, pb_fraction=frac, pb_salient=variant)
                res, seconds = distill(student, teacher, teacher_path, args, name, seed)
                m = res["model"]
                rows.append({"run": "trained", "fraction": frac, "variant": variant, "seed": seed,
                             "ppl": res["val"]["ppl"], "acc": res["val"]["acc"], "packed_bytes": m.packed_bytes(),
                             **linear_stats(m), "seconds": seconds})
                print(f"{name}: ppl {res['val']['ppl']:.4f} ({seconds:.0f} s)", flush=True)
                _save(rows, args)
    return _emit(rows, args, teacher_path, act_bits)


def _save(rows, args) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


def _emit(rows, args, teacher_path, act_bits) -> int:
    table = render(rows, args, teacher_path, act_bits)
    print(table)
    if args.doc:
        replace_marked_block(Path(args.doc), MARKER, table)
    return 0


def _mean_spread(values):
    mean = sum(values) / len(values)
    return mean, (max(values) - min(values)) / 2


def render(rows, args, teacher_path, act_bits) -> str:
    teacher = next(r for r in rows if r["run"] == "teacher")
    t_ppl = teacher["ppl"]
    trained = [r for r in rows if r["run"] == "trained"]
    fractions = sorted({r["fraction"] for r in rows if "fraction" in r}, reverse=True)
    seeds = sorted({r["seed"] for r in trained})
    act = "off (W1A16)" if act_bits is None else f"{act_bits}"
    lines = [f"Setup: teacher `{teacher_path.name}` (val ppl {t_ppl:.3f}); every student initialised from it and "
             f"distilled for {args.steps} steps (batch {args.batch_size} x {args.seq_len} tokens, lr {args.lr}, "
             f"seeds {', '.join(map(str, seeds)) or '-'}), activation bits {act}; validation = the built-in "
             "corpus's held-out split. Only `pb_salient` differs between the two rows of a fraction.",
             "",
             "| pb_fraction | salient set | int8 weights | ppl at init | val ppl (mean +- half range) | per seed | "
             "ppl / teacher | structured / unstructured | linear bytes / weight | model packed bytes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for frac in fractions:
        means = {}
        for variant in VARIANTS:
            init = next((r for r in rows if r["run"] == "init" and r["fraction"] == frac and r["variant"] == variant),
                        None)
            runs = sorted((r for r in trained if r["fraction"] == frac and r["variant"] == variant),
                          key=lambda r: r["seed"])
            ref = runs[0] if runs else init
            if ref is None:
                continue
            if runs:
                mean, spread = _mean_spread([r["ppl"] for r in runs])
                means[variant] = mean
                ppl = f"{mean:.3f} +- {spread:.3f}"
                per_seed = ", ".join(f"{r['ppl']:.3f}" for r in runs)
                rel = f"{mean / t_ppl:.3f}"
            else:
                ppl = per_seed = rel = "not run"
            ratio = ""
            if variant == "channels" and "weights" in means and "channels" in means:
                w = {r["seed"]: r["ppl"] for r in trained if r["fraction"] == frac and r["variant"] == "weights"}
                per = [r["ppl"] / w[r["seed"]] for r in runs if r["seed"] in w]
                ratio = f"{means['channels'] / means['weights']:.4f}"
                if per:
                    ratio += f" (per seed {', '.join(f'{p:.4f}' for p in per)})"
            label = {"weights": "weights (unstructured top-abs(W))",
                     "channels": "channels (input channels, largest max abs(W))"}[variant]
            lines.append(f"| {frac:g} | {label} | {100 * ref['salient_frac']:.2f}% | "
                         f"{init['ppl']:.1f} | {ppl} | {per_seed} | {rel} | {ratio} | "
                         f"{ref['linear_bytes'] / ref['linear_weights']:.4f} | {ref['packed_bytes']:,} |"
                         if init is not None else f"| {frac:g} | {label} | | | {ppl} | {per_seed} | {rel} | {ratio} | | |")
    secs = sum(r.get("seconds", 0.0) for r in trained)
    lines.append("")
    lines.append("'int8 weights': share of the block linears' weights in the salient set (channels: "
                 "round(pb_fraction * d_in) whole columns per linear, so the share is pb_fraction rounded to whole "
                 "columns), after training. 'linear bytes / weight': `binarize.packed_bytes` of the block linears over their "
                 "weight count (dense sign plane 1/8 B, int8 1 B per salient weight, plus 2 index bytes per salient "
                 "weight (unstructured) or per salient column (structured), fp16 row and binary scales). "
                 "'model packed bytes' adds the fp16 embeddings, head and norms. 'ppl at init': the student before "
                 "distillation (the teacher's weights through each scheme). "
                 f"Training wall time {secs / 60:.1f} min on a 2-core machine shared with other jobs.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
