"""How close the integer golden model is to the float binarized layers: one fixed input format against per-layer ones.

For a student (a bitmos checkpoint; or a float model -- Hugging Face folder, ``.gguf``, ``smollm2`` -- binarized with
``--scheme`` by its published init, no training), the real inputs of every binarized linear are taken from a float
forward over validation text (``--corpus``'s held-out split). Each layer then runs twice through the golden model:

* **fixed**: every input in the config's one format (Q7.8 on the presets), as ``bitmos export`` does by default;
* **calibrated**: each layer's own fraction bits from the largest input it saw on ``--calibrate`` tokens of the
  corpus's *training* split (``bitmos export --calibrate``; one bit of headroom).

Per layer: the relative error ||y_golden - y_float|| / ||y_float|| of the layer's output (y_float the layer's own
float forward, ``binary_forward``, on the same float input), its max and mean over layers, and the worst layers.
With ``--ppl``, also the whole model's perplexity on the float student and on both golden models (the integer
path end to end; cheap for the shipped student, slow for 135M parameters in int64 arithmetic).

    python benchmarks/bench_input_scale.py                                   # the shipped BinaryMoS student
    python benchmarks/bench_input_scale.py --model smollm2 --scheme onebit --corpus kjv --tokens 64 --no-ppl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _student import add_student_arguments, load_student_and_text  # noqa: E402


def capture_inputs(model, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every binarized linear's float input [T, K] over the tokens ``idx`` (B, T)."""
    seen: dict[str, torch.Tensor] = {}

    def spy(path, module, x):
        seen[path] = x.detach().reshape(-1, x.shape[-1]).clone()
        return module.binary_forward(x)

    with torch.no_grad():
        model(idx, linear_override=spy)
    return seen


def layer_errors(model, export, inputs: dict[str, torch.Tensor], cfg) -> dict[str, float]:
    """Relative output error of each exported layer's golden run against its float forward on ``inputs``."""
    from bitmos.model.golden import from_fixed, golden_linear, to_fixed

    modules = dict(model.binarized_linears())
    out = {}
    for lin in export.linears:
        x = inputs[lin.name]
        with torch.no_grad():
            want = modules[lin.name].binary_forward(x[None])[0].to(torch.float64)
        got = from_fixed(golden_linear(lin, to_fixed(x, lin.input_frac(cfg)), cfg), cfg.out_frac_bits,
                         torch.float64)
        out[lin.name] = float((got - want).norm() / want.norm().clamp_min(1e-30))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_student_arguments(ap, tokens=512, calibrate=4096, tokens_help="validation tokens whose layer inputs are compared")
    ap.add_argument("--ppl", action=argparse.BooleanOptionalAction, default=None,
                    help="whole-model perplexity of float and both golden models (default: for models < 10M params)")
    args = ap.parse_args(argv)

    from bitmos.errors import BitmosUserError
    from bitmos.model.export import calibration_tokens, export_model
    from bitmos.model.golden import GoldenModel
    from bitmos.model.train import evaluate

    t0 = time.perf_counter()
    try:
        cfg, model, val = load_student_and_text(args)
    except BitmosUserError as exc:
        print(f"bench_input_scale: error: {exc}", file=sys.stderr)
        return 2
    seq = min(model.config.max_seq_len, val.numel())
    idx = val[: (val.numel() // seq) * seq].reshape(-1, seq)
    inputs = capture_inputs(model, idx)
    fixed = export_model(model, cfg)
    calibrated = export_model(model, cfg, calibration=calibration_tokens(model, args.corpus, args.calibrate))
    rows = {}
    for name, exp in (("fixed", fixed), ("calibrated", calibrated)):
        err = layer_errors(model, exp, inputs, cfg)
        worst = sorted(err, key=err.get, reverse=True)[:3]
        fracs = [lin.input_frac(cfg) for lin in exp.linears]
        rows[name] = {"max": max(err.values()), "mean": sum(err.values()) / len(err), "worst": worst,
                      "worst_errors": [err[w] for w in worst], "x_frac_min": min(fracs), "x_frac_max": max(fracs),
                      "per_layer": err}
    nparams = sum(p.numel() for p in model.parameters())
    if args.ppl if args.ppl is not None else nparams < 10_000_000:
        stride = min(model.config.max_seq_len, val.numel() - 1)   # windows of inputs and their next tokens
        rows["ppl_float"] = evaluate(model, val, stride, None)["ppl"]
        for name, exp in (("fixed", fixed), ("calibrated", calibrated)):
            rows[name]["ppl"] = evaluate(GoldenModel(exp, cfg), val, stride, None)["ppl"]
    src = args.model or "shipped student"
    print(f"{src}{' binarized ' + args.scheme if args.scheme else ''} ({model.config.scheme}, {nparams:,} params, "
          f"{len(fixed.linears)} binarized linears) on {cfg.name}; {idx.numel():,} validation tokens of {args.corpus}, "
          f"calibration {args.calibrate:,} training tokens")
    print("| input format | x fraction bits | layer output error max | mean | worst layers | golden ppl |")
    print("|---|---|---|---|---|---|")
    for name in ("fixed", "calibrated"):
        r = rows[name]
        ppl = f"{r['ppl']:.4f}" if "ppl" in r else "-"
        worst = ", ".join(f"{w} {e:.2%}" for w, e in zip(r["worst"], r["worst_errors"]))
        print(f"| {name} | {r['x_frac_min']}..{r['x_frac_max']} | {r['max']:.2%} | {r['mean']:.2%} | {worst} | {ppl} |")
    if "ppl_float" in rows:
        print(f"float student ppl {rows['ppl_float']:.4f}; golden / float: fixed "
              f"{rows['fixed']['ppl'] / rows['ppl_float'] - 1:+.2%}, calibrated "
              f"{rows['calibrated']['ppl'] / rows['ppl_float'] - 1:+.2%}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
