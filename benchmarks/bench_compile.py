"""Compile time of a LLaMA-2-7B-shaped model (shape only, timing-only) on the asic32 preset.

    /work/venv/bin/python benchmarks/bench_compile.py

Prints, for decode (T = 1) and prefill (T = 2048): compile seconds, programs, instruction words, the
Timeline cycles of all 224 binarized linears, stall cycles, and the implied tokens/s at the preset clock.
"""

from __future__ import annotations

import time

from bitmos.config import preset_config
from bitmos.compiler import compile_model
from bitmos.compiler import api as _api

LLAMA2_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000}


def main() -> None:
    cfg = preset_config("asic32")
    for tokens in (1, 2048):
        _api._TILING_CACHE.clear()
        _api._SCHEDULE_CACHE.clear()
        t0 = time.perf_counter()
        model = compile_model(LLAMA2_7B, cfg, tokens, timing_only=True)
        dt = time.perf_counter() - t0
        progs = [p for l in model.layers for p in l.programs]
        words = sum(len(p.words) for p in progs)
        stall = sum(p.stall_cycles for p in progs)
        cycles = model.cycles
        secs = cycles / (cfg.clock_mhz * 1e6)
        print(f"LLaMA-2-7B shape, asic32, T={tokens:5d}: compile {dt:6.2f} s, {len(model.layers)} linears, "
              f"{len(progs)} programs, {words} words, {cycles} cycles ({stall} stalled, "
              f"{100 * stall / cycles:.1f} %), {secs * 1e3:.2f} ms at {cfg.clock_mhz:g} MHz = "
              f"{tokens / secs:.1f} tokens/s (binarized linears only)")


if __name__ == "__main__":
    main()
