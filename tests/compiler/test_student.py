"""Every binarized linear of the shipped student, compiled for several configs, runs in the simulator to
the golden model's result bit for bit (prefill and decode token counts)."""

import numpy as np
import pytest
import torch

from bitmos.compiler import compile_linear, read_layer_output, write_layer_input
from bitmos.config import AcceleratorConfig, preset_config
from bitmos.sim import Simulator

CONFIGS = {
    "small": preset_config("small"),
    "asic32": preset_config("asic32"),
    # a third shape: wide lanes, few rows, tight weight buffer (forces several weight blocks)
    "wide": AcceleratorConfig(name="wide", rows=2, cols=8, lanes=64, act_bits=8, acc_bits=24, experts=4,
                              xbuf_kib=8, wbuf_kib=4, sbuf_kib=16, qbuf_kib=4, obuf_kib=8, meta_tokens=64,
                              imem_words=4096, ext_bw_bits=128, ext_latency=12),
}


@pytest.fixture(scope="module")
def student():
    from bitmos.model.checkpoint import load_checkpoint, shipped_path
    path = shipped_path("student")
    if not path.exists():
        pytest.fail(f"the shipped student {path} is missing")
    model, _ = load_checkpoint(path)
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_layer_of_the_student_is_exact(student, name):
    from bitmos.model.export import export_model
    from bitmos.model.golden import golden_linear

    torch.set_num_threads(1)
    cfg = CONFIGS[name]
    export = export_model(student, cfg)
    sim = Simulator(cfg)
    rng = np.random.default_rng(0)
    for i, lin in enumerate(export.linears):
        tokens = (1, 5)[i % 2]  # alternate decode and a small prefill block
        # activations in the range the host produces (RMSNorm outputs, Q7.8), with a few large values
        x = np.clip(rng.normal(0, 300, (tokens, lin.d_in)), -32768, 32767).astype(np.int16)
        x[:, rng.integers(0, lin.d_in, 2)] = 32767
        cl = compile_linear(lin, cfg, tokens)
        mem = bytearray(cl.memory)
        write_layer_input(mem, cl.manifest, x)
        cycles = 0
        for prog in cl.programs:
            r = sim.run(prog.words, mem)
            assert not r.error, f"{lin.name}: {r.error_message}"
            mem, cycles = r.memory, cycles + r.cycles
        assert cycles == cl.cycles, f"{lin.name}: simulator {cycles} cycles, compiler's timeline {cl.cycles}"
        got = read_layer_output(mem, cl.manifest).astype(np.int64)
        want = golden_linear(lin, torch.from_numpy(x.astype(np.int64)), cfg).numpy()
        assert np.array_equal(got, want), f"{lin.name} on {name}: {(got != want).sum()} outputs differ"
