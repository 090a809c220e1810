"""Integer golden model vs the float student: validation perplexity and greedy-generation agreement.

    python benchmarks/bench_golden.py [CHECKPOINT] [--accel small] [--scope linears|layer] [--calibrate N]
                                      [--json out.json]

Defaults: the shipped student (model/assets/student-mos4-a8.safetensors), the builtin validation corpus, 32768
teacher-forced tokens in windows of 128, and 100 greedy prompts of 32 tokens (evenly spaced over the validation text)
continued for 32 new tokens by both models. ``--scope layer``: every decoder-layer operation in integers
(``bitmos.model.golden_layer``; greedy decoding through its block-floating-point KV cache), not only the binarized
linears. ``--calibrate N``: each layer's input format calibrated on N training tokens. The figures go into
docs/golden.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def prompts_from(tokens: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """n windows of ``length`` tokens at evenly spaced offsets of the validation stream."""
    span = tokens.numel() - length - 1
    starts = [int(i * span / n) for i in range(n)]
    return torch.stack([tokens[s:s + length] for s in starts])


def main(argv=None) -> int:
    from bitmos.model.checkpoint import load_checkpoint, shipped_path
    from bitmos.model.data import encode_corpus, get_tokenizer, load_corpus
    from bitmos.model.export import export_model, resolve_accel
    from bitmos.model.golden import GoldenModel, compare_on_windows, greedy_agreement

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default=None, help="student checkpoint (default: the shipped student)")
    ap.add_argument("--accel", default=None, help="accelerator preset or config file (default: AcceleratorConfig())")
    ap.add_argument("--corpus", default="builtin")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=32768)
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--init-scheme", default=None, help="instead: an untrained student of this scheme initialised "
                                                         "from CHECKPOINT (a teacher)")
    ap.add_argument("--experts", type=int, default=4, help="with --init-scheme")
    ap.add_argument("--act-bits", type=int, default=8, help="with --init-scheme")
    ap.add_argument("--scope", choices=("linears", "layer"), default="linears",
                    help="integer scope of the golden model: the binarized linears, or every decoder-layer op")
    ap.add_argument("--calibrate", type=int, default=0, metavar="N",
                    help="calibrate each layer's input format on N training tokens (default 0: x_frac_bits)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    path = Path(args.checkpoint) if args.checkpoint else shipped_path("student")
    if args.init_scheme:
        # an untrained student initialised from the teacher checkpoint (quick look at other schemes/widths)
        from bitmos.model.transformer import Transformer
        teacher, _ = load_checkpoint(path)
        model = Transformer(teacher.config.replace(scheme=args.init_scheme, experts=args.experts,
                                                   act_bits=args.act_bits)).eval()
        model.load_from_teacher(teacher)
        meta = {"step": f"init from {path.name}"}
    else:
        model, meta = load_checkpoint(path)
    accel = resolve_accel(args.accel)
    t0 = time.time()
    from bitmos.model.export import calibration_tokens
    calib = calibration_tokens(model, "builtin", args.calibrate) if args.calibrate else None
    export = export_model(model, accel, info={"source": str(path), "step": meta.get("step", 0)}, calibration=calib)
    if args.scope == "layer":
        from bitmos.model.golden_layer import GoldenLayerModel
        golden = GoldenLayerModel(export, accel)
    else:
        golden = GoldenModel(export, accel)
    _, val_text = load_corpus(args.corpus)
    tok = get_tokenizer(model.config.tokenizer, path.parent)
    tokens = encode_corpus(val_text, tok)
    bpt = len(val_text.encode("utf-8")) / tokens.numel()
    seq = min(args.seq_len, model.config.max_seq_len)

    t1 = time.time()
    ev = compare_on_windows(golden, model, tokens, seq, args.max_tokens, bytes_per_token=bpt)
    t2 = time.time()
    prompts = prompts_from(tokens, args.prompts, args.prompt_len)
    gen = greedy_agreement(golden, model, prompts, args.new_tokens)
    t3 = time.time()
    st = golden.stats()
    sat = {k: sum(s[k] for s in st.values()) for k in ("x_values", "x_saturated", "y_values", "y_saturated",
                                                         "acc_wrapped")}
    res = {"checkpoint": str(path), "step": meta.get("step"), "scheme": model.config.scheme,
           "experts": model.config.experts, "act_bits": model.config.act_bits, "accelerator": accel.name,
           "scope": args.scope, "calibrate_tokens": args.calibrate,
           "number_formats": {k: getattr(accel, k) for k in ("x_frac_bits", "out_frac_bits", "acc_bits")},
           **ev, "greedy": gen, "saturation": sat,
           "seconds": {"export": t1 - t0, "ppl_eval": t2 - t1, "generation": t3 - t2}}
    g, f = ev["golden"], ev["float"]
    print(f"{path} (step {res['step']}, {res['scheme']} E={res['experts']} A{res['act_bits']}), "
          f"accelerator {accel.name} {res['number_formats']}, integer scope: {args.scope}, "
          f"calibration: {args.calibrate or 'none'} tokens")
    print(f"| model | val ppl | bpb | next-token acc | tokens |\n|---|---|---|---|---|")
    for name, r in (("float student", f), ("integer golden", g)):
        print(f"| {name} | {r['ppl']:.4f} | {r['bpb']:.4f} | {r['acc']:.4f} | {r['tokens']} |")
    print(f"ppl relative difference (golden/float - 1): {100 * ev['ppl_rel_diff']:+.3f} %")
    print(f"teacher-forced argmax agreement: {100 * ev['argmax_agreement']:.2f} %")
    print(f"greedy generation, {gen['prompts']} prompts x {gen['new_tokens']} tokens: token agreement "
          f"{100 * gen['token_agreement']:.2f} %, identical prefix {100 * gen['prefix_agreement']:.2f} %, "
          f"identical continuations {100 * gen['exact']:.1f} %, per-step agreement on the float student's "
          f"greedy sequences {100 * gen['forced_agreement']:.2f} %")
    print(f"saturation over all runs (eval + generation): {sat}")
    if args.scope == "layer":
        print(f"residual adds (values, saturated): {golden.residual_stats}")
        res["residual"] = dict(golden.residual_stats)
    print(f"time: {res['seconds']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
