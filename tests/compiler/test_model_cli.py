"""compile_model (export files, HF and bitmos shape configs), saved outputs, `bitmos compile` / `disasm`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bitmos.app.cli import main
from bitmos.config import preset_config
from bitmos.container import MemoryImage, Program
from bitmos.errors import ConfigError, UnsupportedError
from bitmos.export import ModelExport
from bitmos.compiler import compile_model, llama_linears, read_layer_output, write_layer_input

from tests.compiler.helpers import golden, random_layer, run_programs

HF_TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}
HF_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000}


def small_export(cfg, rng) -> ModelExport:
    names = [("layers.0.attn.q_proj", 40, 40), ("layers.0.mlp.down_proj", 70, 40)]
    lins = [random_layer(rng, a, b, cfg.experts, cfg.act_bits, name=n) for n, a, b in names]
    return ModelExport({"dim": 40, "n_layers": 1}, lins, {"tok_emb": np.zeros((4, 40), np.float32)})


def test_llama_walk_gqa_and_bitmos_names():
    walk = llama_linears(HF_TINY)
    assert len(walk) == 14
    assert walk[1] == ("layers.0.attn.k_proj", 64, 32)          # 2 kv heads * head_dim 16
    assert walk[6] == ("layers.0.mlp.down_proj", 96, 64)
    walk = llama_linears({"dim": 128, "n_layers": 4, "n_heads": 4, "hidden_dim": 384, "vocab_size": 256})
    assert len(walk) == 28 and walk[4] == ("layers.0.mlp.gate_proj", 128, 384)
    with pytest.raises(ConfigError, match="neither 'hidden_size'"):
        llama_linears({"foo": 1})
    with pytest.raises(ConfigError, match="'intermediate_size'"):
        llama_linears({"hidden_size": 8})
    with pytest.raises(UnsupportedError, match="model_type 'gpt2'"):
        llama_linears(dict(HF_TINY, model_type="gpt2"))


def test_export_file_compiles_runs_and_saves(tmp_path):
    cfg = preset_config("small")
    rng = np.random.default_rng(0)
    exp = small_export(cfg, rng)
    path = tmp_path / "student.safetensors"
    exp.save(path)
    model = compile_model(str(path), cfg, 3)
    out = model.save(tmp_path / "prog")
    man = json.loads((out / "manifest.json").read_text())
    assert [l["name"] for l in man["layers"]] == [l.name for l in exp.linears]
    img = MemoryImage.load(out / "memory.bmmem")
    assert img.config_fingerprint == cfg.fingerprint()
    mem = bytearray(img.data)
    for lin, lm in zip(exp.linears, man["layers"]):
        x = rng.integers(-3000, 3000, (3, lin.d_in)).astype(np.int16)
        write_layer_input(mem, lm, x)
        progs = [Program.load(out / p["file"]) for p in lm["programs"]]
        assert all(p.config == cfg for p in progs)
        for p, pm in zip(progs, lm["programs"]):
            p.cycles = pm["cycles"]
        mem, cycles = run_programs(cfg, progs, mem)
        assert cycles == lm["cycles"]
        np.testing.assert_array_equal(read_layer_output(mem, lm), golden(lin, cfg, x))
        assert (out / f"{lin.name}.lst").read_text().count("matmul") >= 1
        assert lm["registers"]["K"] == lin.d_in and "OSHIFT" in lm["registers"]
        assert lm["regions"]["output"]["addr"] >= lm["regions"]["input"]["addr"] + lm["regions"]["input"]["bytes"]


def test_hf_shape_small_materialized_and_7b_timing_only():
    cfg = preset_config("small")
    model = compile_model(HF_TINY, cfg, 1)
    assert model.memory is not None and len(model.layers) == 14
    lay = model.layer("layers.1.attn.v_proj")
    assert (lay.spec.d_in, lay.spec.d_out) == (64, 32)
    big = compile_model(HF_7B, preset_config("asic32"), 1)
    assert big.memory is None and len(big.layers) == 224
    man = big.manifest
    assert man["timing_only"] and man["memory_bytes"] > 4096 * 11008 // 8 * 64
    assert all(l["cycles"] > 0 for l in man["layers"])
    with pytest.raises(UnsupportedError, match="timing-only"):
        big.memory_image()
    # the simulator's timing-only analysis agrees with the compiler's Timeline figures
    from bitmos.sim import Simulator
    sim = Simulator(big.config)
    for lay in big.layers[:7]:
        res = sim.run(lay.programs[0].words, functional=False)
        assert not res.error and res.cycles == lay.cycles


def test_cli_compile_and_disasm(tmp_path, capsys):
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(preset_config("tiny").to_toml())
    model_path = tmp_path / "config.json"
    model_path.write_text(json.dumps(HF_TINY))
    assert main(["compile", str(model_path), "--config", str(cfg_path), "-o", str(tmp_path / "p"),
                 "--tokens", "4"]) == 0
    assert "compiled 14 binarized linears" in capsys.readouterr().out
    man = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert man["tokens"] == 4 and (tmp_path / "p" / "memory.bmmem").is_file()
    prog = tmp_path / "p" / man["layers"][0]["programs"][0]["file"]
    assert main(["disasm", str(prog)]) == 0
    text = capsys.readouterr().out
    assert "quant mode=token" in text and "layers.0.attn.q_proj" in text and "halt" in text
    # same-shaped layers share one cached schedule; each listing still names its own layer
    up = next(l for l in man["layers"] if l["name"] == "layers.1.mlp.up_proj")
    assert main(["disasm", str(tmp_path / "p" / up["programs"][0]["file"])]) == 0
    text = capsys.readouterr().out
    assert "layers.1.mlp.up_proj: matmul" in text and "gate_proj" not in text
    # user errors: one line, exit status 2
    assert main(["compile", str(tmp_path / "missing.json"), "--config", "tiny", "-o", str(tmp_path / "q")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compile", str(model_path), "--config", "tiny", "-o", str(tmp_path / "q"), "--tokens", "0"]) == 2
    assert main(["compile", str(model_path), "--config", "small", "-o", str(tmp_path / "q"),
                 "--timing-only"]) == 0
    assert not (tmp_path / "q" / "memory.bmmem").exists()
    assert main(["disasm", str(tmp_path / "nope.bmprog")]) == 2
