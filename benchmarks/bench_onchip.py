"""Every scheme on the chip, side by side: quality, bytes, exactness, cycles and energy in one table.

For each student of ``benchmarks/bench_schemes.py`` (the checkpoints of its ``--work`` folder, all distilled
from the same teacher at the same budget):

* quality: validation perplexity on the built-in corpus's held-out split (as bench_schemes.py measures it) and
  its ratio to the teacher's, the packed bytes;
* on ``small`` (or ``small`` with the student's expert count when the preset's 4 experts cannot take it
  exactly): a greedy generation with every binarized linear on the cycle-accurate simulator, checked bit for
  bit against the integer golden model (``bitmos demo``), its decode cycles and mJ per token; the same
  generation verified on the RTL (``bitmos verify``: outputs bit for bit, cycles equal to the simulator's);
* at LLaMA-2-7B shapes on ``asic32``: decode tokens/s and mJ per token in the scheme's weight format
  (``bitmos estimate --scheme``), and the ratio to the memory-bound decode limit.

Schemes without a hardware path are listed with the compiler's reason. The table goes between the
``bench_onchip`` markers of docs/model.md.

    python benchmarks/bench_schemes.py --steps 300 --threads 1 --only sign,onebit,mos4,ternary,fbi \\
        --work runs/bench --doc ""
    python benchmarks/bench_onchip.py --students runs/bench
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from bitmos.config import AcceleratorConfig, preset_config
from bitmos.fileio import replace_marked_block


def chip_config(scheme: str, experts: int, base: AcceleratorConfig) -> AcceleratorConfig:
    """``base``, or ``base`` with the student's expert count where the compiler cannot map it onto base's
    experts exactly (2 <= E < base's, or more than base's): the smallest change that runs the student; a
    structured PB-LLM student on the preset with int8 weight planes (small-w8)."""
    if scheme == "pb":
        return preset_config(f"{base.name}-w8")
    if experts <= 1 or experts == base.experts:
        return base
    return dataclasses.replace(base, name=f"{base.name}-e{experts}", experts=experts)


def on_chip(ckpt: Path, cfg: AcceleratorConfig, tokens: int, verify_tokens: int, work: Path) -> dict:
    from bitmos.app.demo import run_demo
    from bitmos.app.verify import run_verify

    cfg_file = work / f"{cfg.name}.toml"
    cfg_file.write_text(cfg.to_toml(), encoding="utf-8")
    quiet = lambda *a, **k: None  # noqa: E731
    demo = run_demo(checkpoint=str(ckpt), config=str(cfg_file), tokens=tokens, out_dir=None, progress=quiet)
    dec = demo["decode"]
    t0 = time.perf_counter()
    ver = run_verify(checkpoint=str(ckpt), config=str(cfg_file), tokens=verify_tokens,
                     workdir=str(work / f"verify-{ckpt.stem}"), progress=quiet)
    calls = ver["calls"]
    return {"config": cfg.name, "golden_equals_sim": bool(demo["matches_golden"]),
            "golden_layer_runs": demo["layer_runs"], "sim_tokens": demo["new_tokens"],
            "decode_cycles_per_token": dec["cycles"] / dec["tokens"],
            "decode_uj_per_token": 1e6 * dec["energy_per_token_j"], "decode_tokens_per_s": dec["tokens_per_s"],
            "rtl_passed": bool(ver["passed"]), "rtl_calls": len(calls), "rtl_programs": ver["programs"],
            "rtl_cycles": sum(c["rtl_cycles"] or 0 for c in calls), "sim_cycles": sum(c["sim_cycles"] for c in calls),
            "rtl_tokens": verify_tokens, "rtl_seconds": time.perf_counter() - t0}


def at_7b(scheme: str, prefill: int, decode: int, pb_fraction: float = 0.1) -> dict:
    """The scheme at LLaMA-2-7B shapes on asic32 (structured PB-LLM: asic32 with 8-bit weight planes and 32-bit
    sums, which LLaMA-2's int8 channel groups need), ``bitmos estimate --scheme``."""
    from bitmos.explore.perf import estimate

    cfg = preset_config("asic32")
    if scheme == "pb":
        cfg = dataclasses.replace(cfg, name="asic32-w8", weight_bits=8, acc_bits=32)
    est = estimate("llama-2-7b", cfg, prefill=prefill, decode=decode, scheme=scheme, pb_fraction=pb_fraction)
    d = est["decode"]
    return {"tokens_per_s": d["tokens_per_s"], "mj_per_token": 1e3 * d["energy_per_token_j"],
            "bound_tokens_per_s": est["decode_bound_tokens_per_s"],
            "weight_mib": est["model"]["weight_bits"] / 8 / 2**20}


def render(rows: list[dict], teacher_ppl: float, args) -> str:
    lines = [f"Students: bench_schemes.py's checkpoints (same teacher, steps, data and seed), runs "
             f"{', '.join(r['run'] for r in rows if 'chip' in r)}. On chip: "
             f"{args.tokens} generated tokens on the simulator against the golden model, {args.verify_tokens} on the "
             "RTL (Verilator, native bench) against the simulator; decode figures on the simulator's generation; "
             "7B: LLaMA-2-7B shapes on asic32, prefill 0, 128 decode tokens.",
             "",
             "| run | weights | packed bytes | val ppl | / teacher | chip | golden = sim | RTL = sim (cycles) | "
             "decode cycles/token | decode uJ/token | 7B decode tok/s (/ bound) | 7B mJ/token |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = f"{r['ppl']:.3f} | {r['ppl'] / teacher_ppl:.3f}" if "ppl" in r else "(table above) |"
        packed = f"{r['packed_bytes']:,}" if "packed_bytes" in r else ""
        wfmt = {"ternary": "ternary (2 planes)", "pb": f"sign + int8 salient channels ({r.get('pb_fraction', 0.1):g})",
                "bitnet": "sign of W - mean W (LayerNorm on the host)"}.get(r["scheme"], "sign")
        if "reason" in r:
            lines.append(f"| {r['run']} | {wfmt} | {packed} | {q} | no hardware path: {r['reason']} | | | | | | |")
            continue
        c, b = r["chip"], r["7b"]
        rtl = (f"PASS {c['rtl_calls']} calls, {c['rtl_cycles']:,} = {c['sim_cycles']:,}"
               if c["rtl_passed"] and c["rtl_cycles"] == c["sim_cycles"] else
               f"FAIL ({c['rtl_cycles']:,} vs {c['sim_cycles']:,})")
        lines.append(f"| {r['run']} | {wfmt} | {packed} | {q} | {c['config']} | "
                     f"{'yes' if c['golden_equals_sim'] else 'NO'} ({c['golden_layer_runs']} runs) | {rtl} | "
                     f"{c['decode_cycles_per_token']:,.0f} | {c['decode_uj_per_token']:.1f} | "
                     f"{b['tokens_per_s']:.1f} ({b['tokens_per_s'] / b['bound_tokens_per_s']:.2f}) | "
                     f"{b['mj_per_token']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", default="runs/bench", help="bench_schemes.py --work folder")
    ap.add_argument("--runs", default="sign,onebit,mos1,mos2,mos4,mos8,ternary,fbi,bitnet,pb-channels",
                    help="runs to take from it, those present (default: every on-chip scheme of bench_schemes.py)")
    ap.add_argument("--teacher", default=None, help="teacher checkpoint (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=16, help="tokens generated on the simulator (default 16)")
    ap.add_argument("--verify-tokens", type=int, default=4, help="tokens of the RTL generation (default 4)")
    ap.add_argument("--doc", default="docs/model.md", help="markdown file with the bench_onchip markers")
    ap.add_argument("--marker", default="bench_onchip",
                    help="the markers of --doc to write the table between (default bench_onchip)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    import torch

    from bitmos.compiler.lower import UNSUPPORTED_SCHEMES
    from bitmos.model.checkpoint import load_checkpoint, shipped_path
    from bitmos.model.data import encode_corpus, get_tokenizer, load_corpus
    from bitmos.model.train import evaluate

    torch.set_num_threads(args.threads)
    teacher, _ = load_checkpoint(Path(args.teacher) if args.teacher else shipped_path("teacher"))
    val = encode_corpus(load_corpus("builtin")[1], get_tokenizer(teacher.config.tokenizer))
    teacher_ppl = evaluate(teacher, val, 128, None)["ppl"]
    ckpts = [Path(args.students) / f"{run}.safetensors" for run in args.runs.split(",")]
    ckpts = [c for c in ckpts if c.is_file()]
    if not ckpts:
        print(f"bench_onchip: no checkpoint of {args.runs} in {args.students}", file=sys.stderr)
        return 2
    small = preset_config("small")
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-onchip-") as tmp:
        for ckpt in ckpts:
            model, _ = load_checkpoint(ckpt)
            mc = model.config
            experts = mc.experts if mc.scheme == "mos" else (1 if mc.scheme in ("onebit", "fbi") else 0)
            r = {"run": ckpt.stem, "scheme": mc.scheme, "experts": experts, "packed_bytes": model.packed_bytes(),
                 "pb_fraction": mc.pb_fraction,
                 "ppl": evaluate(model, val, 128, None)["ppl"]}
            t0 = time.perf_counter()
            row = {**r, "chip": on_chip(ckpt, chip_config(mc.scheme, experts, small), args.tokens,
                                        args.verify_tokens, Path(tmp)),
                   "7b": at_7b(r["scheme"], 0, 128, mc.pb_fraction)}
            out.append(row)
            c = row["chip"]
            print(f"{r['run']}: golden = sim {c['golden_equals_sim']}, RTL {c['rtl_passed']} "
                  f"({c['rtl_cycles']} / {c['sim_cycles']} cycles), decode {c['decode_cycles_per_token']:.0f} "
                  f"cycles/token, 7B {row['7b']['tokens_per_s']:.1f} tok/s ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    # the model's schemes the compiler still refuses, with its reason (their quality: the table above)
    seen = {r["scheme"] for r in out}
    out += [{"run": s, "scheme": s, "reason": why} for s, why in UNSUPPORTED_SCHEMES.items()
            if s not in seen and s != "float"]
    table = render(out, teacher_ppl, args)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    if args.doc:
        replace_marked_block(Path(args.doc), args.marker, table)
    ok = all("reason" in r or (r["chip"]["golden_equals_sim"] and r["chip"]["rtl_passed"]
                               and r["chip"]["rtl_cycles"] == r["chip"]["sim_cycles"]) for r in out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
