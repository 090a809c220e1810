"""Shared helpers of the compiler tests: random layers, program execution, the golden comparison."""

from __future__ import annotations

import importlib

import numpy as np

from bitmos.config import AcceleratorConfig
from bitmos.export import BinaryLinearExport
from bitmos.isa import decode
from bitmos.semantics import Timeline

from tests import reference_machine


def sim_module():
    """bitmos.sim: every compiled program in these tests runs on it (and on the reference interpreter)."""
    return importlib.import_module("bitmos.sim")


def random_layer(rng, K: int, N: int, experts: int, act_bits: int, *, name: str = "layers.0.mlp.up_proj",
                 scheme: str | None = None) -> BinaryLinearExport:
    E = experts
    router = rng.integers(-3000, 3000, (E, K)).astype(np.int16) if E >= 2 else None
    s_in = rng.integers(100, 4000, (E, K)).astype(np.int16) if E >= 1 else None
    s_out = rng.integers(-4000, 4000, (E, N)).astype(np.int16) if E >= 1 else None
    if scheme is None:
        scheme = "mos" if E >= 2 else ("onebit" if E == 1 else "sign")
    # ternary (BitNet b1.58, one scale like sign): about a third of the weights zero
    nonzero = rng.random((N, K)) < 0.67 if scheme == "ternary" else None
    # fbi (FBI-LLM, E = 1): beta as int16 with exponent 12, i.e. RSHIFT = x_frac_bits + 12 - out_frac_bits
    bias = rng.integers(-32768, 32768, K).astype(np.int16) if scheme == "fbi" else None
    return BinaryLinearExport(name, K, N, E, act_bits, rng.random((N, K)) < 0.5, router, 12, s_in, 12, s_out, 12,
                              smul=int(rng.integers(-3000, 3000)) if E == 0 else 0, smul_exp=12, scheme=scheme,
                              nonzero=nonzero, bias=bias, bias_exp=12)


def run_programs(cfg: AcceleratorConfig, programs, memory: bytearray, *, use_sim: bool = True) -> tuple[bytearray, int]:
    """Run a layer's programs in order on one memory; returns (memory, cycles). Checks each program's
    cycle count against the compiler's Timeline figure, and bitmos.sim against the reference interpreter."""
    sim = sim_module() if use_sim else None
    total = 0
    for p in programs:
        ref = reference_machine.run(cfg, p.words, memory)
        assert ref.error is None
        assert ref.cycles == p.cycles, (ref.cycles, p.cycles)
        if sim is not None:
            res = sim.Simulator(cfg).run(p.words, bytearray(memory))
            assert not getattr(res, "error", None), res.error
            assert res.cycles == p.cycles, (res.cycles, p.cycles)
            assert bytes(res.memory) == bytes(ref.memory), "bitmos.sim and the reference interpreter disagree"
        memory = ref.memory
        total += ref.cycles
    return memory, total


def timeline_cycles(cfg: AcceleratorConfig, words: list[int], K: int) -> int:
    tl = Timeline.of(cfg)
    k = wbits = 0
    for w in words:
        ins = decode(w)
        if ins.op.name == "SETR" and ins["reg"] == 0:
            k = ins["value"]
        if ins.op.name == "SETR" and ins["reg"] == 7:
            wbits = ins["value"]
        tl.step(ins, cfg, k, wbits)
    return tl.now


def golden(lin: BinaryLinearExport, cfg: AcceleratorConfig, x: np.ndarray) -> np.ndarray:
    return np.array(reference_machine.golden(lin, cfg, x.astype(int).tolist()), dtype=np.int64).reshape(x.shape[0], lin.d_out)
