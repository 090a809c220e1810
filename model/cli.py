"""``bitmos train | distill | eval | generate``: the model area's subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bitmos.cliargs import float_in, non_negative_int, positive_int
from bitmos.errors import BitmosUserError


def _threads(args):
    import torch
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def _common_train(p):
    p.add_argument("--out", required=True, help="checkpoint path (.safetensors); <out>.trainer.pt for resuming")
    p.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--seq-len", type=positive_int, default=128)
    p.add_argument("--lr", type=float_in(0, low_open=True), default=2e-3)
    p.add_argument("--min-lr", type=float_in(0), default=None)
    p.add_argument("--warmup", type=non_negative_int, default=50)
    p.add_argument("--weight-decay", type=float_in(0), default=0.1)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--eval-interval", type=non_negative_int, default=250,
                   help="steps between validation runs (0 = only at the end)")
    p.add_argument("--eval-tokens", type=positive_int, default=32768)
    p.add_argument("--ckpt-interval", type=positive_int, default=250)
    p.add_argument("--corpus", default="builtin", help="builtin | kjv (Debian bible-kjv) | kjv:<dump.txt> | "
                   "files:<a.txt,b.txt> | hf:<name>[:<config>]")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--compact", action="store_true", help="store large tensors as bfloat16 (signs kept exactly)")
    p.add_argument("--resume", action="store_true", help="continue from --out and its .trainer.pt")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--no-progress", action="store_true")


def _train_args(args, **extra):
    from bitmos.model.train import TrainArgs
    steps = args.steps or 1000
    tokens = getattr(args, "tokens", None)
    if tokens is not None:
        if args.steps is not None:
            raise BitmosUserError("give --tokens or --steps, not both")
        steps = -(-tokens // (args.batch_size * args.seq_len))   # ceil: the budget is spent in whole steps
    return TrainArgs(out=args.out, steps=steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                     min_lr=args.min_lr, warmup=args.warmup, weight_decay=args.weight_decay, seed=args.seed,
                     eval_interval=args.eval_interval, eval_tokens=args.eval_tokens,
                     ckpt_interval=args.ckpt_interval, corpus=args.corpus, cache_dir=args.cache_dir,
                     compact=args.compact, progress=not args.no_progress, **extra)


def _act_bits(s):
    if s.lower() in ("off", "none", "16"):
        return None
    try:
        bits = int(s)
    except ValueError:
        bits = 0
    if not 1 <= bits <= 15:
        raise argparse.ArgumentTypeError(f"act bits must be 1..16 or 'off', got {s!r}")
    return bits


def _eval_act_bits(s):
    return "off" if s.lower() in ("off", "none", "16") else _act_bits(s)


def _report(result, args):
    v = result.get("val")
    if v is not None:
        print(f"{args.out}: step {result['step']}, world {result['world']}, {result['seconds']:.0f} s, val ppl {v['ppl']:.3f}, "
              f"bpb {v['bpb']:.4f}, acc {v['acc']:.4f}")
    return 0


def cmd_train(args) -> int:
    from bitmos.model.config import ModelConfig
    from bitmos.model.train import train
    _threads(args)
    config = ModelConfig(vocab_size=args.vocab_size, dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads,
                         hidden_dim=args.hidden_dim, max_seq_len=args.max_seq_len, scheme=args.scheme,
                         experts=args.experts, act_bits=args.act_bits, pb_fraction=args.pb_fraction,
                         pb_salient=args.pb_salient)
    return _report(train(config, _train_args(args), resume=args.resume), args)


def _given_tokenizer(args):
    """``--tokenizer``: ``byte`` or a tokenizer.json path (None when not given)."""
    spec = getattr(args, "tokenizer", None)
    if not spec:
        return None
    from bitmos.model.data import BPETokenizer, ByteTokenizer
    if spec == "byte":
        return ByteTokenizer()
    path = Path(spec)
    if not path.is_file():
        raise BitmosUserError(f"--tokenizer {spec}: not 'byte' and no such tokenizer.json file")
    tok = BPETokenizer.from_file(path, kind="hf")
    return tok


def _load_model(path, args, what: str = "model", act_bits: int | None = None):
    """A bitmos checkpoint, a Hugging Face folder or a GGUF file, optionally binarized (``--scheme``, the scheme's
    init from the float weights, no training, at ``act_bits`` if given); the model's own tokenizer is
    ``model.tokenizer``. A ``--tokenizer`` that is not the model's is an error naming both."""
    from bitmos.model.data import check_same_tokenizer
    from bitmos.model.hf import load_model_source
    model, meta = load_model_source(path, scheme=getattr(args, "scheme", None),
                                    experts=getattr(args, "experts", None), act_bits=act_bits)
    given = _given_tokenizer(args)
    if given is not None:
        check_same_tokenizer(model.tokenizer, f"{what} {path}", given, f"--tokenizer {args.tokenizer}")
    return model, meta


def _load_teacher(args):
    model, _ = _load_model(args.hf_teacher or args.teacher, argparse.Namespace(), "teacher")
    return model


def cmd_distill(args) -> int:
    from bitmos.model.train import train
    _threads(args)
    if not (args.teacher or args.hf_teacher):
        raise BitmosUserError("distill needs --teacher CHECKPOINT or --hf-teacher DIR")
    teacher = _load_teacher(args)
    config = teacher.config.replace(scheme=args.scheme, experts=args.experts, act_bits=args.act_bits,
                                    pb_fraction=args.pb_fraction, pb_salient=args.pb_salient)
    targs = _train_args(args, teacher=args.teacher or args.hf_teacher, from_teacher=not args.from_scratch,
                        gt_weight=args.gt_weight, hidden_weight=args.hidden_weight, train_only=args.train)
    given = _given_tokenizer(args)
    if given is not None:
        from bitmos.model.data import check_same_tokenizer
        check_same_tokenizer(teacher.tokenizer, f"teacher {args.hf_teacher or args.teacher}", given,
                             f"--tokenizer {args.tokenizer}")
    return _report(train(config, targs, teacher=teacher, resume=args.resume, tokenizer=teacher.tokenizer), args)


def _eval_targets(args):
    from bitmos.model.checkpoint import SHIPPED_PAIR, checkpoint_arg, shipped_path
    if args.checkpoints:   # a path, or the name of a shipped checkpoint (student, student-fbi, ...)
        return [(c, checkpoint_arg(c)) for c in args.checkpoints]
    return [(name, shipped_path(name)) for name in SHIPPED_PAIR]


def cmd_eval(args) -> int:
    from bitmos.model.data import encode_corpus, load_corpus
    from bitmos.model.train import evaluate
    _threads(args)
    _, val_text = load_corpus(args.corpus, args.cache_dir)
    rows = []
    for name, path in _eval_targets(args):
        model, meta = _load_model(path, args)
        if args.act_bits is not None:
            for _, m in model.binarized_linears():
                m.act_bits = None if args.act_bits == "off" else args.act_bits
        tok = model.tokenizer
        val = encode_corpus(val_text, tok)
        seq = min(args.seq_len, model.config.max_seq_len)
        ev = evaluate(model, val, seq, args.max_tokens, bytes_per_token=len(val_text.encode()) / val.numel())
        binarized = model.config.binarized
        act = model.config.act_bits if args.act_bits is None else (None if args.act_bits == "off" else args.act_bits)
        rows.append({"name": str(name), "path": str(path), "scheme": model.config.scheme,
                     "tokenizer": model.config.tokenizer,
                     "experts": model.config.experts if model.config.scheme == "mos" else None,
                     "act_bits": act if binarized else None, "step": meta["step"], **ev})
        if args.golden and binarized:
            # the same student in the accelerator's integer arithmetic (bitmos.model.golden)
            from bitmos.model.golden import evaluate_golden
            source = model
            if args.calibrate:   # each layer's int16 input format from real inputs (as bitmos export --calibrate)
                from bitmos.model.export import calibration_tokens, export_model
                source = export_model(model, args.accel or "small",
                                      calibration=calibration_tokens(model, "builtin", args.calibrate))
            g = evaluate_golden(source, args.accel or "small", tokens=val, seq_len=seq, max_tokens=args.max_tokens,
                                bytes_per_token=len(val_text.encode()) / val.numel(), compare_float=False,
                                scope=args.golden_scope)
            rows[-1]["golden"] = {**g["golden"], "ppl_rel_diff": g["golden"]["ppl"] / ev["ppl"] - 1,
                                  "scope": g["scope"], "accelerator": g.get("accelerator"),
                                  "saturation": g.get("saturation"), "residual": g.get("residual")}
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']}: scheme {r['scheme']}, act_bits {r['act_bits']}, ppl {r['ppl']:.3f}, bpb {r['bpb']:.4f}, "
                  f"acc {r['acc']:.4f} ({r['tokens']} tokens)")
            if "golden" in r:
                g = r["golden"]
                print(f"{r['name']} (integer golden, {g['scope']}): ppl {g['ppl']:.3f} ({g['ppl_rel_diff'] * 100:+.3f} % vs float), "
                      f"bpb {g['bpb']:.4f}, acc {g['acc']:.4f}")
    return 0


def cmd_export(args) -> int:
    from bitmos.model.checkpoint import checkpoint_arg
    from bitmos.model.export import export_model, resolve_accel
    _threads(args)
    from bitmos.model.export import calibration_tokens
    path = checkpoint_arg(args.checkpoint)
    cfg = resolve_accel(args.config)
    # a float model binarized on the way in takes the chip's activation bits (the compiler refuses any other)
    model, meta = _load_model(path, args, act_bits=cfg.act_bits)
    calib = calibration_tokens(model, args.corpus, args.calibrate) if args.calibrate else None
    exp = export_model(model, cfg, info={"source": str(path), "step": meta.get("step", 0),
                                         "teacher": meta.get("train_args", {}).get("teacher"),
                                         "tokenizer": model.config.tokenizer}, calibration=calib)
    exp.save(args.output)
    if calib is not None:
        fracs = sorted({lin.x_frac for lin in exp.linears})
        fmt = f"x Q.{fracs[0]}..Q.{fracs[-1]} per layer, calibrated on {calib.numel():,} tokens of {args.corpus}"
    else:
        fmt = f"x Q.{cfg.x_frac_bits}"
    print(f"wrote {args.output}: {len(exp.linears)} binarized linears of {path.name} in the number formats of "
          f"accelerator {cfg.name!r} ({fmt}, y Q.{cfg.out_frac_bits}, A{cfg.act_bits})")
    return 0


def cmd_generate(args) -> int:
    import torch
    from bitmos.model.checkpoint import checkpoint_arg
    _threads(args)
    path = checkpoint_arg(args.checkpoint)
    model, _ = _load_model(path, args)
    tok = model.tokenizer
    ids = tok.encode(args.prompt)
    if not ids:
        raise BitmosUserError("--prompt must not be empty")
    if len(ids) + args.max_new_tokens > model.config.max_seq_len:
        raise BitmosUserError(f"prompt ({len(ids)} tokens) + --max-new-tokens {args.max_new_tokens} exceeds the "
                              f"model's context of {model.config.max_seq_len} tokens")
    g = torch.Generator().manual_seed(args.seed)
    out = model.generate(torch.tensor([ids]), args.max_new_tokens, args.temperature,
                         args.top_k if args.top_k > 0 else None, generator=g)
    print(tok.decode(out[0].tolist()))
    return 0


def _model_source_args(p):
    from bitmos.model.config import SCHEMES
    p.add_argument("--scheme", choices=[s for s in SCHEMES if s != "float"], default=None,
                   help="binarize a float model (HF folder, GGUF, teacher) with this scheme's init, no training")
    p.add_argument("--experts", type=int, default=None, help="scale experts for --scheme mos (default 4)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json (or 'byte') to check against the model's own: a mismatch is an error")


def add_commands(subparsers) -> None:
    from bitmos.model.config import PB_SALIENT, SCHEMES

    p = subparsers.add_parser("train", help="train a model (the float teacher, or a binarized model from scratch)")
    p.add_argument("--vocab-size", type=positive_int, default=256)
    p.add_argument("--dim", type=positive_int, default=128)
    p.add_argument("--n-layers", type=positive_int, default=4)
    p.add_argument("--n-heads", type=positive_int, default=4)
    p.add_argument("--hidden-dim", type=positive_int, default=384)
    p.add_argument("--max-seq-len", type=positive_int, default=256)
    p.add_argument("--scheme", choices=SCHEMES, default="float")
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--act-bits", type=_act_bits, default=8)
    p.add_argument("--pb-fraction", type=float_in(0, 1), default=0.1)
    p.add_argument("--pb-salient", choices=PB_SALIENT, default="weights",
                   help="pb: 'weights' = the top-|W| weights (PB-LLM's set), 'channels' = whole input channels")
    _common_train(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("distill", help="distill a binarized student from a teacher (FBI-LLM style)")
    p.add_argument("--teacher", help="teacher checkpoint (.safetensors)")
    p.add_argument("--hf-teacher", help="local Hugging Face LLaMA-family folder (config.json, safetensors, "
                   "tokenizer.json) or a LLaMA .gguf file; the student inherits its tokenizer")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (or 'byte') to train with; must be the "
                   "teacher's (default: the teacher's own)")
    p.add_argument("--scheme", choices=[s for s in SCHEMES if s != "float"], default="mos")
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--act-bits", type=_act_bits, default=8)
    p.add_argument("--pb-fraction", type=float_in(0, 1), default=0.1)
    p.add_argument("--pb-salient", choices=PB_SALIENT, default="weights",
                   help="pb: 'weights' = the top-|W| weights (PB-LLM's set), 'channels' = whole input channels")
    p.add_argument("--from-scratch", action="store_true", help="random student instead of the teacher's weights")
    p.add_argument("--gt-weight", type=float_in(0, 1), default=0.0, help="weight of the ground-truth CE (0..1)")
    p.add_argument("--hidden-weight", type=float_in(0), default=0.0, help="weight of sum of per-layer hidden MSE")
    p.add_argument("--train", choices=("all", "scales"), default="all",
                   help="scales: train only the binarized linears' scales and MoS routers (fbi, onebit, mos)")
    p.add_argument("--tokens", type=positive_int, default=None,
                   help="training budget in tokens: steps = ceil(tokens / (batch size x seq len)); not with --steps")
    _common_train(p)
    p.set_defaults(func=cmd_distill)

    p = subparsers.add_parser("eval", help="perplexity, bits per byte, next-token accuracy on held-out text")
    p.add_argument("checkpoints", nargs="*", help="bitmos checkpoints, Hugging Face folders or .gguf files "
                   "(default: the shipped teacher and student)")
    _model_source_args(p)
    p.add_argument("--corpus", default="builtin")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--seq-len", type=positive_int, default=128)
    p.add_argument("--max-tokens", type=positive_int, default=None, help="evaluate on at most this many tokens")
    p.add_argument("--act-bits", type=_eval_act_bits, default=None,
                   help="override every binarized linear's activation bits (1..15 or off)")
    p.add_argument("--golden", action="store_true",
                   help="also evaluate each binarized student as the integer golden model (accelerator arithmetic)")
    p.add_argument("--accel", default=None, help="accelerator config for --golden (preset or file; default small)")
    p.add_argument("--calibrate", type=non_negative_int, default=0, metavar="TOKENS",
                   help="for --golden: calibrate each layer's int16 input format on this many tokens of the built-in "
                   "corpus's training split (default 0: the config's x_frac_bits)")
    p.add_argument("--golden-scope", choices=("linears", "layer"), default="linears",
                   help="what --golden runs in integers: the binarized linears (what the chip runs today; the rest "
                   "of each layer in float) or every decoder-layer operation (RMSNorm, rotary, attention with "
                   "the block-floating-point KV cache, SiLU, residuals; docs/architecture.md)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--threads", type=positive_int, default=None)
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("export", help="export a binarized student to the accelerator's integer formats "
                              "(the file the compiler reads)")
    p.add_argument("checkpoint", nargs="?", help="student checkpoint, or a Hugging Face folder / .gguf file with "
                   "--scheme (default: the shipped student)")
    _model_source_args(p)
    p.add_argument("--config", default="small", help="accelerator config (preset or file) whose formats to use")
    p.add_argument("-o", "--output", required=True, help="export file to write (safetensors + JSON header)")
    p.add_argument("--calibrate", type=non_negative_int, default=0, metavar="TOKENS",
                   help="give every binarized linear its own input format (fraction bits from the largest input it "
                        "sees on TOKENS tokens of --corpus's training split; 0 = the config's x_frac_bits, default)")
    p.add_argument("--corpus", default="builtin", help="calibration text (default builtin; kjv, files:PATH, ...)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("generate", help="sample text (greedy with --temperature 0, else top-k)")
    p.add_argument("checkpoint", nargs="?", help="bitmos checkpoint, Hugging Face folder or .gguf file "
                   "(default: the shipped student)")
    _model_source_args(p)
    p.add_argument("--prompt", default="def ")
    p.add_argument("--max-new-tokens", type=positive_int, default=200)
    p.add_argument("--temperature", type=float_in(0), default=0.8,
                   help="0 = greedy; a finite number >= 0")
    p.add_argument("--top-k", type=non_negative_int, default=40, help="0 = no top-k cut")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None)
    p.set_defaults(func=cmd_generate)
