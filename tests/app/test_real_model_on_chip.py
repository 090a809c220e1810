"""A pretrained LLaMA-family model on the chip (issue 20): a Hugging Face folder made here (grouped-query attention,
tied embeddings, its own BPE tokenizer) binarized on the way in by `bitmos demo` / `bitmos verify --scheme`, every
binarized linear on the simulator (and the RTL) bit for bit against the golden model, text in the model's tokenizer."""

import json

import pytest

from bitmos.app.cli import main

from .rtl_helpers import needs_verilator

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from tests.model.test_real_models import make_tokenizer, tiny_hf  # noqa: E402


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-gqa-llama")
    tok = make_tokenizer()
    tiny_hf(tok.get_vocab_size(), tie=True, kv=2).save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_demo_binarizes_a_hf_folder_and_runs_it_on_the_simulator(hf_folder, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--checkpoint", str(hf_folder), "--scheme", "onebit", "--config", "small",
                 "--prompt", "The quick brown", "--tokens", "4", "--out", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["matches_golden"] and rep["layer_mismatches"] == []
    assert rep["new_tokens"] == 4
    # 2 layers x 7 linears, prefill + 3 decode steps
    assert rep["layer_runs"] == 14 * 4
    # the prompt went through the model's BPE tokenizer (fewer tokens than bytes), not the byte tokenizer
    assert rep["prompt_tokens"] < len("The quick brown")
    assert (out / "report.json").exists() and (out / "generated.txt").read_text().startswith("The quick brown")


def test_demo_of_a_float_model_without_scheme_is_one_line(hf_folder, tmp_path, capsys):
    assert main(["demo", "--checkpoint", str(hf_folder), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a float model; give --scheme" in err[0], err
    assert not (tmp_path / "d").exists()


def test_scheme_on_a_binarized_student_is_one_line(tmp_path, capsys):
    assert main(["demo", "--checkpoint", "student", "--scheme", "sign", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is already a 'mos' student" in err[0], err


def test_export_binarizes_at_the_chips_activation_bits(hf_folder, tmp_path, capsys):
    from bitmos.export import ModelExport
    out = tmp_path / "m.bmx"
    assert main(["export", str(hf_folder), "--scheme", "onebit", "--config", "medium", "-o", str(out)]) == 0
    exp = ModelExport.load(out)
    assert {lin.act_bits for lin in exp.linears} == {4}        # medium quantizes to 4 bits
    assert main(["compile", str(out), "--config", "medium", "-o", str(tmp_path / "prog")]) == 0


@needs_verilator
def test_verify_runs_a_binarized_hf_model_on_the_rtl(hf_folder, fresh_folder, capsys):
    assert main(["verify", "--checkpoint", str(hf_folder), "--scheme", "mos", "--experts", "4",
                 "--prompt", "Free software", "--tokens", "2"]) == 0
    out = capsys.readouterr().out
    # prefill + 1 decode step, 14 linears each: every call bit-exact, RTL cycles == simulator cycles
    assert "PASS: 28/28 binarized-linear calls (14 linears x 2 steps" in out, out


def test_a_chip_too_small_for_the_model_is_refused_up_front_naming_the_presets(tmp_path, capsys):
    # hidden 576 (SmolLM2-135M's width): MoS router and S_in need 288 SBUF lines, small has 256
    folder = tmp_path / "wide"
    tok = make_tokenizer()
    cfg = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=576, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=9, num_key_value_heads=3,
                                   max_position_embeddings=64, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    capsys.readouterr()
    assert main(["demo", "--checkpoint", str(folder), "--scheme", "mos", "--config", "small",
                 "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "SBUF has 256" in err[0] and err[0].endswith("the presets that hold every layer of this model: asic32, medium")
    assert not (tmp_path / "d").exists()


def test_demo_of_a_binarized_qwen2_with_llama3_rope_matches_golden(tmp_path, capsys):
    """Qwen2's q/k/v biases stay float on the host (added after the chip's output) and a Llama 3 RoPE table is
    the host's too: the demo still matches the golden model bit for bit."""
    folder = tmp_path / "qwen2"
    tok = make_tokenizer()
    cfg = transformers.Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, tie_word_embeddings=True,
                                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    capsys.readouterr()
    assert main(["demo", "--checkpoint", str(folder), "--scheme", "mos", "--tokens", "3",
                 "--out", str(tmp_path / "d"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["matches_golden"] and rep["layer_runs"] == 14 * 3
