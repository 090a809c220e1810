"""`bitmos estimate`: whole-model prefill and decode figures of a model shape on a config.

The estimator itself is :func:`bitmos.explore.perf.estimate` (compiler + timing-only simulator), the
same one the design-space sweep uses; this module is its command line and text report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bitmos.config import AcceleratorConfig
from bitmos.errors import ConfigError


def _fmt_estimate(est: dict[str, Any]) -> str:
    from bitmos.sim.report import format_text

    m = est["model"]
    planes = m["weight_bits"] // m["binary_weights"]
    fmt = "1 bit" if planes == 1 else f"{planes} bits (ternary: two weight planes)"
    lines = [f"model: {m['layers']} binarized linears, {m['binary_weights'] / 1e9:.2f} G weights "
             f"({m['weight_bits'] / 8 / 2**20:.0f} MiB at {fmt})"]
    for phase in ("prefill", "decode"):
        if phase in est:
            lines.append(f"\n== {phase} ({est[phase]['tokens']} tokens)")
            lines.append(format_text(est[phase]).rstrip())
    lines.append(f"\nmemory-bound decode limit: {est['decode_bound_tokens_per_s']:.1f} tokens/s "
                 "(bandwidth / weight bytes per token)")
    if "context" in est:
        lines.append(_fmt_context(est["context"]))
    lines.append(f"(estimated in {est['wall_seconds']:.2f} s, timing-only simulation)")
    return "\n".join(lines) + "\n"


#: How the context section names ``decode_at_context``'s components.
_COMPONENT_NAMES = {"linears": "binarized linears (simulated)",
                    "vector_unit": "norms, rotary, SwiGLU, residual adds (sim.)",
                    "attention": "attention + KV cache (simulated)",
                    "kv_cache": "KV cache reads + write (memory bound)"}


def _fmt_context(c: dict[str, Any]) -> str:
    total_e = c["energy_per_token_j"]
    lines = [f"\n== one decode token at a context of {c['context']:,} tokens",
             *([f"attention at the memory bound, not simulated: {c['attention_refused']}"]
               if c.get("attention_refused") else []),
             f"KV cache: {c['kv_bytes_per_position']:,} bytes per position; this token reads "
             f"{c['kv_read_bytes'] / 1e6:,.4g} MB and writes {c['kv_write_bytes']:,} bytes",
             f"{'component':40s} {'cycles':>14s} {'share':>6s} {'mJ/token':>10s} {'share':>6s}"]
    for name, comp in c["components"].items():
        lines.append(f"{_COMPONENT_NAMES[name]:40s} {comp['cycles']:14,.0f} {comp['cycles'] / c['cycles']:6.1%} "
                     f"{comp['energy_j'] * 1e3:10.4g} {comp['energy_j'] / total_e:6.1%}")
    lines += [f"{'whole token':40s} {c['cycles']:14,.0f} {'':6s} {total_e * 1e3:10.4g}",
              f"decode: {c['tokens_per_s']:,.1f} tokens/s, {total_e * 1e3:.4g} mJ/token; memory bound "
              f"(bandwidth / (weight bytes + KV bytes)): {c['bound_tokens_per_s']:,.1f} tokens/s "
              f"({c['tokens_per_s'] / c['bound_tokens_per_s']:.3f} of it)",
              *([f"host, per token (not in the figures above): the LM head, {c['host']['vocab_size']:,} x "
                 f"{c['host']['lm_head_macs'] // c['host']['vocab_size']:,} float16 weights ("
                 f"{c['host']['lm_head_bytes'] / 1e6:,.0f} MB) and {c['host']['lm_head_macs'] / 1e6:,.0f} M "
                 "multiply-adds"] if c.get("host") else []),
              "not counted (host work today): "
              + (", ".join(c.get("not_counted", []) + ([] if c.get("attention_simulated") else
                                                        ["the attention arithmetic beyond its stream"])
                           + ["embedding", "LM head"])
                 if "vector_unit" in c["components"] else
                 "norms, rotary embedding, softmax, SiLU, residual adds, embedding, LM head (a config with "
                 "vector_unit = 1 simulates the norms, rotary, SiLU and residual adds)")]
    return "\n".join(lines)


def _write_context_plot(sweep: list[dict[str, Any]], marked: int, path: Path, title: str) -> None:
    """tokens/s (with the memory bound) and mJ/token by component over the context lengths of ``sweep``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bitmos.sim.report import save_figure

    xs = [r["context"] for r in sweep]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.loglog(xs, [r["tokens_per_s"] for r in sweep], "o-", label="estimate")
    a.loglog(xs, [r["bound_tokens_per_s"] for r in sweep], "k--", label="memory bound")
    a.axvline(marked, color="grey", lw=0.8)
    a.set_xlabel("context (tokens)")
    a.set_ylabel("decode tokens/s")
    a.legend()
    names = list(dict.fromkeys(n for r in sweep for n in r["components"]))   # attention or, where its cache
    b.stackplot(xs, *[[r["components"].get(n, {"energy_j": 0})["energy_j"] * 1e3 for r in sweep]  # does not fit,
                      for n in names],                                                            # kv_cache
                labels=[_COMPONENT_NAMES[n] for n in names])
    b.set_xscale("log")
    b.axvline(marked, color="grey", lw=0.8)
    b.set_xlabel("context (tokens)")
    b.set_ylabel("mJ per decode token")
    b.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)
    plt.close(fig)


def cmd_estimate(args) -> int:
    from bitmos.explore.perf import estimate

    cfg = AcceleratorConfig.load(args.config)
    if args.context is not None and not args.decode:
        raise ConfigError("--context needs a decode phase (--decode >= 1)", field="context")
    est = estimate(args.model, cfg, prefill=args.prefill, decode=args.decode, energy_table=args.energy_table,
                   max_work=args.max_work or None, scheme=args.scheme, pb_fraction=args.pb_fraction)
    if args.context is not None:
        from bitmos.explore.perf import CONTEXT_SWEEP, context_sweep, decode_at_context
        est["context"] = decode_at_context(est, args.model, args.context)
        est["context_sweep"] = context_sweep(est, args.model, sorted(set(CONTEXT_SWEEP) | {args.context}))
    if args.plots:
        from bitmos.fileio import atomic_folder, write_json_atomic
        from bitmos.sim.report import write_plots
        with atomic_folder(args.plots, marker="estimate.json") as out:
            for phase in ("prefill", "decode"):
                if phase in est:
                    (out / phase).mkdir(parents=True, exist_ok=True)
                    write_plots(est[phase], out / phase)
            if "context" in est:
                _write_context_plot(est["context_sweep"], args.context, out / "context.png",
                                    f"{est['model']['name']} on {cfg.name}: decode over context")
            write_json_atomic(out / "estimate.json", est)
    if args.json:
        print(json.dumps(est, indent=2))
    else:
        print(_fmt_estimate(est), end="")
    return 0


def add_commands(sub) -> None:
    from bitmos.compiler import MODEL_SHAPES
    from bitmos.compiler.lower import SUPPORTED_SCHEMES
    from bitmos.cliargs import float_in, int_at_least
    from bitmos.explore.perf import DEFAULT_MAX_WORK

    p = sub.add_parser("estimate", help="whole-model prefill/decode throughput and energy of a model shape "
                       "(e.g. LLaMA-2-7B) on a config, in timing-only simulation")
    p.add_argument("--model", default="llama-2-7b",
                   help=f"Hugging Face config.json, bitmos model config JSON, or one of {', '.join(MODEL_SHAPES)}")
    p.add_argument("--config", default="asic32", help="accelerator config file or preset (default asic32)")
    p.add_argument("--prefill", type=int, default=2048, help="prompt tokens (default 2048)")
    p.add_argument("--decode", type=int, default=128, help="generated tokens (default 128)")
    p.add_argument("--max-work", type=int_at_least(0), default=DEFAULT_MAX_WORK, metavar="N",
                   help=f"refuse a prefill that is more than N array tile steps to compile and simulate (default "
                        f"{DEFAULT_MAX_WORK:,}, about 20 s; 0: no limit)")
    p.add_argument("--scheme", choices=SUPPORTED_SCHEMES, default="mos",
                   help="the students' scheme: its weight format (sign, onebit, mos, fbi, bitnet: 1 bit per weight; "
                        "ternary: two weight planes, needs weight_bits >= 2; pb: each linear as a sign layer over "
                        "its non-salient input channels and an int8 layer over the salient ones, needs "
                        "weight_bits = 8); the scales (and fbi's beta . x, on the router) run on the config's scale "
                        "path, onto which every scheme maps exactly (default mos)")
    p.add_argument("--pb-fraction", type=float_in(0.0, 1.0), default=0.1, metavar="F",
                   help="--scheme pb: the fraction of each linear's input channels kept in int8 (default 0.1)")
    p.add_argument("--context", type=int_at_least(1), default=None, metavar="N",
                   help="also one decode token at a context of N tokens: the step as simulated plus its "
                        "attention over the KV cache (simulated on a config with vector_unit = 1 where a kv head's "
                        "cache fits WBUF, else the cache's bytes at the memory bound), with a sweep over contexts "
                        "128..32k (in --json and --plots' context.png)")
    p.add_argument("--energy-table", help="energy table name or TOML file (default by memory bandwidth)")
    p.add_argument("--plots", metavar="DIR", help="write estimate.json and roofline/energy plots per phase")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_estimate)
