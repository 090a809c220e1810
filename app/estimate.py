"""`bitmos estimate`: whole-model prefill and decode figures of a model shape on a config
(compiler + timing-only simulator)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bitmos.config import AcceleratorConfig
from bitmos.errors import ConfigError


def load_shape(model: str) -> dict[str, Any]:
    """A shape name from :data:`bitmos.compiler.MODEL_SHAPES`, a Hugging Face ``config.json`` or a bitmos
    model config JSON."""
    from bitmos.compiler import MODEL_SHAPES

    if model in MODEL_SHAPES:
        return dict(MODEL_SHAPES[model])
    p = Path(model)
    if not p.is_file():
        raise ConfigError(f"model {model!r} is neither a file nor a built-in shape "
                          f"({', '.join(MODEL_SHAPES)})")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not a readable JSON model config ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a JSON object")
    return data.get("model_config", data) if "dim" not in data and "hidden_size" not in data else data



def estimate(shape: dict[str, Any], cfg: AcceleratorConfig, *, prefill: int, decode: int,
             energy_table: str | None = None) -> dict[str, Any]:
    """Whole-model prefill and decode figures in timing-only mode.

    Every binarized linear is compiled and simulated; layers of the same shape compile to programs
    that differ only in external addresses, which do not affect timing or action counts, so each
    distinct (d_in, d_out) is compiled and simulated once and counted once per occurrence. Decode
    runs every linear on one token (a KV-cached step), so M decode tokens cost M identical steps.
    Host-side operations (attention, norms, embeddings, LM head) are not on the accelerator and are
    not counted.
    """
    from bitmos.compiler import llama_linears
    from bitmos.explore.perf import simulate_linears
    from bitmos.sim.energy import EnergyTable
    from bitmos.sim.report import summarize

    if prefill < 0 or decode < 0 or prefill + decode == 0:
        raise ConfigError(f"--prefill ({prefill}) and --decode ({decode}) must be >= 0 and not both 0")
    table = EnergyTable.load(energy_table) if energy_table else EnergyTable.load(_default_table(cfg))
    walk = llama_linears(shape)
    out: dict[str, Any] = {"model": {"layers": len(walk), "binary_weights": sum(a * b for _, a, b in walk)},
                           "config": cfg.to_dict()}
    t0 = time.perf_counter()
    for phase, tokens in (("prefill", prefill), ("decode", 1 if decode else 0)):
        if not tokens:
            continue
        runs, names = [], []
        for (name, _, _), layer_runs in zip(walk, simulate_linears(cfg, walk, tokens)):
            runs += layer_runs
            names += [name] * len(layer_runs)
        steps = decode if phase == "decode" else 1
        s = summarize(runs * steps, table, tokens=tokens * steps)
        s.pop("per_run", None)
        s["per_layer"] = [{"name": n, "cycles": r.cycles, "stall_cycles": r.stall_cycles}
                          for n, r in zip(names, runs)]
        out[phase] = s
    weight_bytes = out["model"]["binary_weights"] / 8
    f = cfg.clock_mhz * 1e6
    out["decode_bound_tokens_per_s"] = (cfg.ext_bw_bits / 8 * f) / weight_bytes
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def _default_table(cfg: AcceleratorConfig) -> str:
    return "horowitz45_hbm2" if cfg.ext_bw_bits >= 512 else "horowitz45_ddr3"


def _fmt_estimate(est: dict[str, Any]) -> str:
    from bitmos.sim.report import format_text

    lines = [f"model: {est['model']['layers']} binarized linears, "
             f"{est['model']['binary_weights'] / 1e9:.2f} G binary weights "
             f"({est['model']['binary_weights'] / 8 / 2**20:.0f} MiB at 1 bit)"]
    for phase in ("prefill", "decode"):
        if phase in est:
            lines.append(f"\n== {phase} ({est[phase]['tokens']} tokens)")
            lines.append(format_text(est[phase]).rstrip())
    lines.append(f"\nmemory-bound decode limit: {est['decode_bound_tokens_per_s']:.1f} tokens/s "
                 "(bandwidth / weight bytes per token)")
    lines.append(f"(estimated in {est['wall_seconds']:.2f} s, timing-only simulation)")
    return "\n".join(lines) + "\n"


def cmd_estimate(args) -> int:
    cfg = AcceleratorConfig.load(args.config)
    est = estimate(load_shape(args.model), cfg, prefill=args.prefill, decode=args.decode,
                   energy_table=args.energy_table)
    if args.plots:
        from bitmos.fileio import write_json_atomic
        from bitmos.sim.report import write_plots
        out = Path(args.plots)
        for phase in ("prefill", "decode"):
            if phase in est:
                (out / phase).mkdir(parents=True, exist_ok=True)
                write_plots(est[phase], out / phase)
        write_json_atomic(out / "estimate.json", est)
    if args.json:
        print(json.dumps(est, indent=2))
    else:
        print(_fmt_estimate(est), end="")
    return 0


def add_commands(sub) -> None:
    from bitmos.compiler import MODEL_SHAPES

    p = sub.add_parser("estimate", help="whole-model prefill/decode throughput and energy of a model shape "
                       "(e.g. LLaMA-2-7B) on a config, in timing-only simulation")
    p.add_argument("--model", default="llama-2-7b",
                   help=f"Hugging Face config.json, bitmos model config JSON, or one of {', '.join(MODEL_SHAPES)}")
    p.add_argument("--config", default="asic32", help="accelerator config file or preset (default asic32)")
    p.add_argument("--prefill", type=int, default=2048, help="prompt tokens (default 2048)")
    p.add_argument("--decode", type=int, default=128, help="generated tokens (default 128)")
    p.add_argument("--energy-table", help="energy table name or TOML file (default by memory bandwidth)")
    p.add_argument("--plots", metavar="DIR", help="write estimate.json and roofline/energy plots per phase")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_estimate)
