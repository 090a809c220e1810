"""Whole-token decode over context on the whole-layer chip, beside the memory bound (issue 18's evidence).

For LLaMA-2-7B (sign weights) and a BitNet-b1.58-2B-shaped model (ternary weights, grouped-query attention: 20
query heads over 5 kv heads) on ``asic32`` with the vector unit, one decode token at contexts 128, 2k, 8k, 16k
and 32k: every binarized linear, norm, rotary embedding, SwiGLU, residual add and the attention over the KV cache
simulated (timing-only mode of the compiled programs; ``bitmos estimate --context``'s figures), once per
``attn_rows`` value (query rows that share each WBUF line of the attention's passes: 1, and 4 = a BitNet kv
head's group) and ``dma_queue`` value (transfers the DMA engine keeps in flight: 1, the preset's engine, and 8). Printed per row: tokens/s, the memory bound (external bandwidth / (weight bytes + KV-cache bytes
a token reads)) and the ratio, mJ/token, external bytes per token, and how the attention ran on the simulated
chip: its kv heads' caches staged whole in WBUF, or read tile by tile where they are longer than WBUF holds (or,
where even a tiled pass does not fit the buffers, standing in at the memory bound).

    python benchmarks/bench_context.py [--contexts 128,2048,8192,16384,32768] [--attn-rows 1,4] [--dma-queue 1,8]
                                       [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from bitmos.config import preset_config
from bitmos.explore.perf import decode_at_context, estimate

MODELS = (("llama-2-7b", "mos"), ("bitnet-b1.58-2b", "ternary"))


def measure(contexts: list[int], attn_rows: tuple[int, ...] = (1,), dma_queues: tuple[int, ...] = (0,)) -> list[dict]:
    rows = []
    for model, scheme in MODELS:
        for q in dma_queues:
            for p in attn_rows:
                cfg = dataclasses.replace(preset_config("asic32"), name="asic32+vector", vector_unit=1, attn_rows=p,
                                          dma_queue=q)
                rows += _rows(cfg, model, scheme, contexts)
    return rows


def _rows(cfg, model: str, scheme: str, contexts: list[int]) -> list[dict]:
    rows = []
    t0 = time.perf_counter()
    est = estimate(model, cfg, prefill=0, decode=1, scheme=scheme)
    for c in contexts:
        at = decode_at_context(est, model, c)
        rows.append({"model": model, "scheme": scheme, "context": c, "attn_rows": max(1, cfg.attn_rows),
                     "dma_queue": cfg.dma_slots,
                     "tokens_per_s": at["tokens_per_s"],
                     "bound_tokens_per_s": at["bound_tokens_per_s"],
                     "ratio": at["tokens_per_s"] / at["bound_tokens_per_s"],
                     "mj_per_token": at["energy_per_token_j"] * 1e3,
                     "ext_mb_per_token": at["ext_bytes_per_token"] / 1e6,
                     "kv_mb_read": at["kv_read_bytes"] / 1e6,
                     "cycles": {k: v["cycles"] for k, v in at["components"].items()},
                     "attention": ("memory bound (buffers too small)" if not at["attention_simulated"] else
                                   "simulated, tiled" if at["attention_tiled"] else "simulated"),
                     "seconds": time.perf_counter() - t0})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", default="128,2048,8192,16384,32768")
    ap.add_argument("--attn-rows", default="1,4", help="attn_rows values (query rows sharing each WBUF line)")
    ap.add_argument("--dma-queue", default="1,8", help="dma_queue values (transfers the DMA engine keeps in flight)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = measure([int(c) for c in args.contexts.split(",")], tuple(int(p) for p in args.attn_rows.split(",")),
                   tuple(int(q) for q in args.dma_queue.split(",")))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| model | DMA queue | attn rows | context | tokens/s | bound | ratio | mJ/token | ext MB/token (KV read) | "
          "attention |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} ({r['scheme']}) | {r['dma_queue']} | {r['attn_rows']} | {r['context']:,} | "
              f"{r['tokens_per_s']:.1f} | "
              f"{r['bound_tokens_per_s']:.1f} | {r['ratio']:.3f} | {r['mj_per_token']:.1f} | "
              f"{r['ext_mb_per_token']:,.0f} ({r['kv_mb_read']:,.0f}) | {r['attention']} |")
    print("\nbound = ext_bw_bits x clock / 8 / (weight bytes + KV-cache bytes per token); config asic32 + vector "
          "unit (1024 bit/cycle at 1 GHz = 128 GB/s, HBM2 energy table)")


if __name__ == "__main__":
    main()
