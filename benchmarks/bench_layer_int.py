"""The whole decoder layer in integers on real activations: each half-layer against its float twin, same input.

For a student (a bitmos checkpoint; or a float model -- Hugging Face folder, ``.gguf``, ``smollm2`` -- binarized with
``--scheme``), the float model runs validation text and every decoder layer's float residual input is kept. Each
half-layer then runs twice from the same input: in float (the student's own ``Block``: RMSNorm, binarized linears,
rotary, attention, SiLU) and in integers (``bitmos.model.golden_layer.GoldenLayerModel``: the chip's formats, the
input converted to the int32 residual stream). Reported per half (attention: ``attn(norm(x))``; MLP:
``mlp(norm(h))``), with every op in integers and, as the baseline, with only the binarized linears in integers
(the golden model of today's chip): the relative error ||delta_int - delta_float|| / ||delta_float|| of what the half adds to the
residual stream, max and mean over layers, so an error is not hidden by the residual it is added to and does
not compound through the model. Also: the largest residual magnitude seen (int32 range: 32,768 at Q15.16) and
the KV cache's bytes per token.

    python benchmarks/bench_layer_int.py                                   # the shipped student, 512 tokens
    python benchmarks/bench_layer_int.py --model smollm2 --scheme mos --config asic32 --tokens 256 --calibrate 1024
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

HALVES = ("attn", "mlp", "attn_linears", "mlp_linears")


def half_errors(model, golden, idx: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per layer: the attention and MLP halves' relative errors against float, same float input: every op in
    integers (``attn``, ``mlp``) and only the binarized linears in integers (``attn_linears``, ``mlp_linears``: the
    golden model of the chip as it is today), so the share of the error the other ops add is visible."""
    from bitmos.model.golden import GoldenModel, from_fixed, to_fixed
    linears_only = GoldenModel(golden.export, golden.accel_cfg)
    from bitmos.model.golden_layer import KVCacheBFP
    F = golden.frac
    t = model
    errs: dict[str, dict[str, float]] = {}
    peak = 0.0
    with torch.no_grad():
        for row in idx:
            T = row.numel()
            x = t.tok_embeddings(row[None])                                    # (1, T, C)
            cos, sin = t.rope_cos[:T], t.rope_sin[:T]
            pos = torch.arange(T)
            cache = KVCacheBFP()
            for i, block in enumerate(t.layers):
                a = block.attn(block.attn_norm(x), cos, sin)                   # float halves
                h = x + a
                m = block.mlp(block.mlp_norm(h))
                with t.overridden(linears_only.boundary):                      # integer linears, float rest
                    a_lin = block.attn(block.attn_norm(x), cos, sin)
                    m_lin = block.mlp(block.mlp_norm(h))
                r = to_fixed(x[0], F, 32)
                a_int = from_fixed(golden.attention_half(i, r, pos, cache) - r, F)
                rh = to_fixed(h[0], F, 32)
                m_int = from_fixed(golden.mlp_half(i, rh) - rh, F)
                e = errs.setdefault(f"layers.{i}", {})
                for key, got, want in (("attn", a_int, a[0]), ("mlp", m_int, m[0]),
                                       ("attn_linears", a_lin[0], a[0]), ("mlp_linears", m_lin[0], m[0])):
                    e[key + "_num"] = e.get(key + "_num", 0.0) + float((got - want).pow(2).sum())
                    e[key + "_den"] = e.get(key + "_den", 0.0) + float(want.pow(2).sum())
                peak = max(peak, float(x.abs().max()), float(h.abs().max()))
                x = h + m
    out = {k: {h: (v[h + "_num"] / max(v[h + "_den"], 1e-30)) ** 0.5 for h in HALVES} for k, v in errs.items()}
    return {"layers": out, "residual_peak": peak}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_student_arguments(ap, tokens=512, calibrate=0, tokens_help="validation tokens (windows of max_seq_len)")
    args = ap.parse_args(argv)

    from bitmos.errors import BitmosUserError
    from bitmos.model.export import calibration_tokens, export_model
    from bitmos.model.golden_layer import GoldenLayerModel

    t0 = time.perf_counter()
    try:
        cfg, model, val = load_student_and_text(args)
        calib = calibration_tokens(model, args.corpus, args.calibrate) if args.calibrate else None
        golden = GoldenLayerModel(export_model(model, cfg, calibration=calib), cfg)
    except BitmosUserError as exc:
        print(f"bench_layer_int: error: {exc}", file=sys.stderr)
        return 2
    seq = min(model.config.max_seq_len, 128, val.numel())
    idx = val[: (val.numel() // seq) * seq].reshape(-1, seq)
    res = half_errors(model, golden, idx)
    c = model.config
    layers = res["layers"]
    summary = {h: {"max": max(v[h] for v in layers.values()), "mean": sum(v[h] for v in layers.values()) / len(layers),
                   "worst": max(layers, key=lambda k: layers[k][h])} for h in HALVES}
    from bitmos.formats import kv_cache_bytes_per_token
    kv_bytes = kv_cache_bytes_per_token(c.n_layers, c.n_kv_heads, c.head_dim)
    src = args.model or "shipped student"
    print(f"{src}{' binarized ' + args.scheme if args.scheme else ''} ({c.scheme}; {c.n_layers} layers, {c.n_heads} "
          f"heads / {c.n_kv_heads} kv heads of {c.head_dim}) on {cfg.name}; {idx.numel():,} validation tokens of "
          f"{args.corpus} in windows of {seq}; linear inputs {'calibrated on ' + str(args.calibrate) + ' tokens' if args.calibrate else 'at x_frac_bits'}")
    print("| half-layer | in integers | relative error max | mean | worst layer |\n|---|---|---|---|---|")
    for h, name in (("attn", "attention: o_proj(attn(rope(q, k), v)) of rms_norm(x)"),
                    ("mlp", "MLP: down(silu(gate) * up) of rms_norm(h)")):
        for key, scope in ((h + "_linears", "the binarized linears (today's chip)"), (h, "every op")):
            s = summary[key]
            print(f"| {name} | {scope} | {s['max']:.2%} | {s['mean']:.2%} | {s['worst']} |")
    print(f"largest residual value {res['residual_peak']:.1f} (int32 at Q15.16 holds 32,768); residual adds that "
          f"saturated: {golden.residual_stats['saturated']} of {golden.residual_stats['values']:,}")
    print(f"KV cache: {kv_bytes:,} bytes per token of context ({c.n_layers} layers x K and V x {c.n_kv_heads} kv heads "
          f"x ({c.head_dim} int8 + 1 exponent byte))")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, **res, "kv_bytes_per_token": kv_bytes}, indent=2)
                                   + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
