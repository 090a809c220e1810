"""Simulator speed on a LLaMA-2-7B-shaped binarized model (32 layers; q,k,v,o 4096x4096, gate/up
4096->11008, down 11008->4096) on preset asic32, in timing-only mode.

Programs come from ``bitmos.compiler`` (``compile_spec`` on synthetic weights, timing-only): one per
distinct shape (q/k/v/o, gate/up, down) and token count. Layer programs with the same shape differ
only in external addresses, which do not change timing, so the model's cycles are
sum(count x cycles of the shape). Reported:

* wall time of one decode token and of a 2048-token prefill, simulating every one of the 224
  layer-program instances (no reuse), and with shape reuse (each distinct program once);
* a naive cycle-by-cycle reference (a loop that advances one cycle at a time through the same
  Timeline rule) on the q_proj decode program, extrapolated to the whole token;
* SCALE-Sim's published ~79 s for one 4096x4096 decode GEMM (reference/hardware.md) x 224 GEMMs.

Run: /work/venv/bin/python benchmarks/bench_sim.py
"""

from __future__ import annotations

import time

from collections import Counter

from bitmos.compiler import MODEL_SHAPES, compile_spec, llama_linears, synthetic_spec
from bitmos.compiler.shapes import scheme_linears
from bitmos.config import preset_config
from bitmos.explore.perf import simulate_linears
from bitmos.isa import BUFFERS, Op, decode
from bitmos.semantics import compute_cycles, dma_cycles
from bitmos.sim import Simulator

MODEL = MODEL_SHAPES["llama-2-7b"]
LAYERS = MODEL["n_layers"]
#: distinct (d_in, d_out) of one decoder layer -> linears of that shape per layer
SHAPES = Counter((k, n) for _, k, n in llama_linears(dict(MODEL, n_layers=1)))
SCALESIM_S_PER_GEMM = 79.0


def per_cycle_reference(words, cfg) -> tuple[int, float]:
    """Advance one cycle at a time: the controller counts down its busy cycles, the DMA engine
    counts down its own, a DMA-synchronising instruction waits while the DMA is busy."""
    ins = [decode(w) for w in words]
    k = 0
    pc, cycle, ctl_left, dma_left = 0, 0, 0, 0
    t0 = time.perf_counter()
    while True:
        if ctl_left == 0:
            i = ins[pc]
            if i.op in (Op.LOAD, Op.STORE, Op.WAIT, Op.HALT) and dma_left > 0:
                pass                                    # stall this cycle
            else:
                if i.op is Op.HALT:
                    cycle += 1
                    break
                if i.op is Op.SETR and i["reg"] == 0:
                    k = i["value"]
                if i.op in (Op.LOAD, Op.STORE):
                    dma_left = dma_cycles(i["nlines"], cfg.line_bits(BUFFERS[i["buf"]]), cfg) + 1
                    ctl_left = 1
                else:
                    ctl_left = compute_cycles(i, cfg, k)
                pc += 1
        cycle += 1
        if ctl_left:
            ctl_left -= 1
        if dma_left:
            dma_left -= 1
    return cycle, time.perf_counter() - t0


def main() -> None:
    cfg = preset_config("asic32")
    sim = Simulator(cfg)
    print(f"LLaMA-2-7B-shaped binarized model, {LAYERS} layers, preset asic32 "
          f"({cfg.rows}x{cfg.cols} PEs x {cfg.lanes} lanes, {cfg.clock_mhz:g} MHz), timing-only mode")
    progs = {}
    t0 = time.perf_counter()
    for tokens in (1, 2048):
        for name in SHAPES:
            spec = synthetic_spec(f"linear{name}", *name, cfg, seed=0, materialize=False)
            progs[tokens, name] = [p.words for p in compile_spec(spec, cfg, tokens).programs]
    print(f"compile (bitmos.compiler, {len(progs)} distinct programs): {time.perf_counter() - t0:.1f} s "
          "(not counted below)")
    for tokens, label in ((1, "decode, 1 token"), (2048, "prefill, 2048 tokens")):
        # (a) every layer-program instance simulated
        t0 = time.perf_counter()
        cycles_all = 0
        n_words = 0
        for name, per_layer in SHAPES.items():
            for _ in range(LAYERS * per_layer):
                for w in progs[tokens, name]:
                    r = sim.run(w, functional=False)
                    assert not r.error, r.error_message
                    cycles_all += r.cycles
                    n_words += len(w)
        t_all = time.perf_counter() - t0
        # (b) shape reuse
        t0 = time.perf_counter()
        cycles = 0
        for name, per_layer in SHAPES.items():
            c = sum(sim.run(w, functional=False).cycles for w in progs[tokens, name])
            cycles += c * LAYERS * per_layer
        t_reuse = time.perf_counter() - t0
        assert cycles == cycles_all
        # the same count through the path bitmos estimate / bitmos sweep use
        layer = simulate_linears(cfg, scheme_linears(dict(MODEL, n_layers=1), "sign"), tokens)
        assert cycles == LAYERS * sum(r.cycles for runs in layer for r in runs)
        secs = cycles / (cfg.clock_mhz * 1e6)
        print(f"{label:22s}: {cycles:,} cycles = {secs * 1e3:.2f} ms simulated ({tokens / secs:,.0f} tokens/s); "
              f"wall {t_all:.2f} s for all 224 programs ({n_words:,} instructions, "
              f"{cycles / t_all / 1e6:,.0f} M simulated cycles/s), {t_reuse * 1e3:.1f} ms with shape reuse")
        if tokens == 1:
            decode_cycles, decode_wall = cycles, t_all
    # naive per-cycle reference on q_proj decode, extrapolated
    w = progs[1, (4096, 4096)][0]
    ref_cycles, ref_t = per_cycle_reference(w, cfg)
    assert ref_cycles == sim.run(w, functional=False).cycles, "per-cycle reference disagrees"
    rate = ref_cycles / ref_t
    est = decode_cycles / rate
    print(f"naive per-cycle loop    : {rate / 1e6:.2f} M cycles/s on q_proj decode ({ref_cycles:,} cycles, same "
          f"count); one decode token would take ~{est:.1f} s = {est / decode_wall:,.0f}x slower")
    scalesim = SCALESIM_S_PER_GEMM * LAYERS * 7
    print(f"SCALE-Sim 3.0 (published ~{SCALESIM_S_PER_GEMM:.0f} s per 4096x4096 decode GEMM) x 224 GEMMs: "
          f"~{scalesim / 3600:.1f} h per decode token = {scalesim / decode_wall:,.0f}x slower")


if __name__ == "__main__":
    main()
