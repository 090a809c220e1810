"""Real LLaMA-family models in (issue 20): a tiny Hugging Face LLaMA with grouped-query attention, an explicit
head_dim and tied embeddings made here, a tiny GGUF written with the gguf package, the tokenizer rule, the CLI."""

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from bitmos.errors import BitmosUserError  # noqa: E402
from bitmos.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint  # noqa: E402
from bitmos.model.config import ModelConfig  # noqa: E402
from bitmos.model.data import ByteTokenizer, check_same_tokenizer  # noqa: E402
from bitmos.model.distill import make_student  # noqa: E402
from bitmos.model.hf import load_any, load_hf_llama  # noqa: E402
from bitmos.model.train import TrainArgs, train  # noqa: E402
from bitmos.model.transformer import KVCache, Transformer  # noqa: E402

TEXT = ("The quick brown fox jumps over the lazy dog. " * 3 +
        "Free software is a matter of liberty, not price. To understand the concept, you should think of free "
        "as in free speech, not as in free beer. Everyone is permitted to copy and distribute verbatim copies. ") * 4


def make_tokenizer(vocab_size=300, text=TEXT):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                        special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def tiny_hf(vocab, tie=True, kv=2, head_dim=16, seed=0):
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=kv, head_dim=head_dim,
                                   max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=50000.0,
                                   tie_word_embeddings=tie)
    torch.manual_seed(seed)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():   # non-trivial norms so a swapped norm would show
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = make_tokenizer()
    hf = tiny_hf(tok.get_vocab_size())
    hf.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return folder, hf


def test_hf_folder_gqa_head_dim_tied_matches_transformers(hf_folder):
    folder, hf = hf_folder
    model = load_hf_llama(folder)
    c = model.config
    assert (c.n_heads, c.n_kv_heads, c.head_dim, c.tie_embeddings, c.rope_theta) == (4, 2, 16, True, 50000.0)
    assert c.tokenizer == f"hf:{folder.name}" and model.tokenizer.vocab_size == c.vocab_size
    assert model.lm_head.weight is model.tok_embeddings.weight
    assert model.layers[0].attn.k_proj.weight.shape == (2 * 16, 32)
    idx = torch.randint(0, c.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx).logits
        got, _ = model(idx)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()


def test_gqa_kv_cache_holds_kv_heads_and_matches_full_forward(hf_folder):
    model = load_hf_llama(hf_folder[0])
    idx = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.config)
        steps = [model(idx[:, :5], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 12)]
    assert cache.k[0].shape == (1, 2, 12, 16)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_default_config_fields_mean_the_original_model():
    c = ModelConfig()
    assert (c.n_kv_heads, c.head_dim, c.tie_embeddings) == (c.n_heads, c.dim // c.n_heads, False)
    assert ModelConfig.from_dict({k: v for k, v in c.to_dict().items()
                                  if k not in ("n_kv_heads", "head_dim", "tie_embeddings")}) == c
    with pytest.raises(Exception, match="n_kv_heads"):
        ModelConfig(n_heads=4, n_kv_heads=3)


def test_checkpoint_keeps_tied_weights_once_and_carries_the_tokenizer(hf_folder, tmp_path):
    folder, _ = hf_folder
    teacher = load_hf_llama(folder)
    student = make_student(teacher, "mos", experts=2)
    student.tokenizer = teacher.tokenizer
    assert student.lm_head.weight is student.tok_embeddings.weight
    path = tmp_path / "s.safetensors"
    save_checkpoint(path, student)
    meta, sd = read_checkpoint(path)
    assert "lm_head.weight" not in sd and "tok_embeddings.weight" in sd
    assert meta["tokenizer"] == teacher.tokenizer.to_json()
    loaded, _ = load_checkpoint(path)
    assert loaded.lm_head.weight is loaded.tok_embeddings.weight
    assert loaded.tokenizer.spec == teacher.tokenizer.spec
    assert loaded.tokenizer.encode("free software") == teacher.tokenizer.encode("free software")
    idx = torch.randint(0, student.config.vocab_size, (1, 10))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], student(idx)[0])
    # a model with a non-byte tokenizer cannot be saved without it
    bare = Transformer(student.config)
    with pytest.raises(Exception, match="tokenizer"):
        save_checkpoint(tmp_path / "bare.safetensors", bare)


def test_tokenizer_mismatch_teacher_vs_student_is_an_error_naming_both(hf_folder, tmp_path):
    folder, _ = hf_folder
    teacher = load_hf_llama(folder)
    args = TrainArgs(out=str(tmp_path / "s.safetensors"), steps=1, batch_size=1, seq_len=16, eval_interval=0,
                     progress=False, corpus="files:" + str(_text_file(tmp_path)))
    # the bug of issue 20: a byte-tokenizer student on a BPE teacher trained silently
    with pytest.raises(BitmosUserError, match=r"tokenizer mismatch.*hf:.*'byte' \(256 tokens\)"):
        train(teacher.config.replace(scheme="sign"), args, teacher=teacher, tokenizer=ByteTokenizer())
    with pytest.raises(BitmosUserError, match=r"tokenizer mismatch.*teacher.*hf:.*student 'byte'"):
        train(teacher.config.replace(scheme="sign", tokenizer="byte"), args, teacher=teacher)
    other = make_tokenizer(280, TEXT[::-1])
    from bitmos.model.data import BPETokenizer
    with pytest.raises(BitmosUserError, match="tokenizer mismatch"):
        check_same_tokenizer(teacher.tokenizer, "teacher", BPETokenizer(other, "other", "hf"), "other")


def _text_file(tmp_path):
    p = tmp_path / "text.txt"
    p.write_text(TEXT * 3)
    return p


def test_distill_gqa_teacher_student_inherits_tokenizer(hf_folder, tmp_path):
    folder, _ = hf_folder
    teacher = load_hf_llama(folder)
    out = tmp_path / "s.safetensors"
    args = TrainArgs(out=str(out), steps=2, batch_size=2, seq_len=16, eval_interval=0, eval_tokens=64,
                     progress=False, corpus="files:" + str(_text_file(tmp_path)))
    res = train(teacher.config.replace(scheme="onebit"), args, teacher=teacher)
    assert np.isfinite(res["val"]["ppl"]) and res["val"]["ppl"] < 2 * teacher.config.vocab_size
    student, _ = load_checkpoint(out)
    assert student.config.n_kv_heads == 2 and student.config.tie_embeddings
    assert student.tokenizer.to_json() == teacher.tokenizer.to_json()


# -- GGUF -------------------------------------------------------------------------------------------------------

def write_gguf(path, hf, tok):
    gguf = pytest.importorskip("gguf")
    from bitmos.model.gguf import permute_qk
    c = hf.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    data = json.loads(tok.to_str())
    vocab = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t == "<|endoftext|>" else 1 for t, _ in vocab])   # 3 = control
    w.add_eos_token_id(data["model"]["vocab"]["<|endoftext|>"])
    w.add_bos_token_id(data["model"]["vocab"]["<|endoftext|>"])
    w.add_token_merges(merges)
    sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    for i in range(c.num_hidden_layers):
        for hf_name, g in names.items():
            t = sd[f"model.layers.{i}.{hf_name}.weight"]
            if g == "attn_q":
                t = permute_qk(t, c.num_attention_heads)
            elif g == "attn_k":
                t = permute_qk(t, c.num_key_value_heads)
            # matrices as F16 (a real conversion's dtype), norms F32
            w.add_tensor(f"blk.{i}.{g}.weight", t.astype(np.float16) if t.ndim == 2 else t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_written_with_the_gguf_package_reads_back(hf_folder, tmp_path, capsys):
    pytest.importorskip("gguf")
    from bitmos.model.gguf import load_gguf
    folder, hf = hf_folder
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    path = tmp_path / "tiny.gguf"
    write_gguf(path, hf, tok)
    model = load_gguf(path)
    c = model.config
    assert (c.n_heads, c.n_kv_heads, c.head_dim, c.tie_embeddings, c.rope_theta) == (4, 2, 16, True, 50000.0)
    assert model.lm_head.weight is model.tok_embeddings.weight
    assert model.tokenizer.vocab_size == tok.get_vocab_size()
    for s in ("free software is a matter", "The quick brown fox"):
        assert model.tokenizer.encode(s) == tok.encode(s).ids
    idx = torch.randint(0, c.vocab_size, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(idx).logits
        got, _ = model(idx)
    # matrices went through float16 in the file
    assert (got - ref).abs().max() < 2e-3
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    m2, meta = load_any(path)
    assert meta["source"] == "gguf" and m2.config == c
    # the command line takes the file too, binarized on the way in
    assert _cli("eval", path, "--scheme", "onebit", "--corpus", f"files:{_text_file(tmp_path)}", "--seq-len", 16,
                "--threads", 1) == 0
    assert "scheme onebit" in capsys.readouterr().out


# -- CLI ------------------------------------------------------------------------------------------------------

def _cli(*argv):
    from bitmos.app.cli import main
    return main([str(a) for a in argv])


def test_cli_eval_generate_export_distill_on_a_hf_folder(hf_folder, tmp_path, capsys):
    folder, _ = hf_folder
    text = _text_file(tmp_path)
    assert _cli("eval", folder, "--corpus", f"files:{text}", "--seq-len", 16, "--json", "--threads", 1) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["scheme"] == "float" and rows[0]["tokenizer"] == f"hf:{folder.name}" and rows[0]["tokens"] > 0
    assert _cli("generate", folder, "--prompt", "free software", "--max-new-tokens", 5, "--temperature", 0) == 0
    assert capsys.readouterr().out.startswith("free software")
    assert _cli("export", folder, "--scheme", "mos", "--experts", 2, "-o", tmp_path / "e.safetensors") == 0
    from bitmos.export import ModelExport
    exp = ModelExport.load(tmp_path / "e.safetensors")
    assert len(exp.linears) == 14 and exp.model_config["n_kv_heads"] == 2
    out = tmp_path / "st.safetensors"
    assert _cli("distill", "--hf-teacher", folder, "--scheme", "sign", "--steps", 1, "--batch-size", 1,
                "--seq-len", 16, "--eval-tokens", 32, "--corpus", f"files:{text}", "--out", out,
                "--no-progress", "--threads", 1) == 0
    student, _ = load_checkpoint(out)
    assert student.config.n_kv_heads == 2 and student.tokenizer.spec == f"hf:{folder.name}"
    # the student checkpoint evaluates with its own tokenizer, and a copy of the teacher's tokenizer.json is it
    assert _cli("eval", out, "--corpus", f"files:{text}", "--seq-len", 16, "--tokenizer",
                folder / "tokenizer.json") == 0


def test_cli_tokenizer_mismatch_is_an_error(hf_folder, tmp_path, capsys):
    import re
    folder, _ = hf_folder
    text = _text_file(tmp_path)
    assert _cli("distill", "--hf-teacher", folder, "--tokenizer", "byte", "--steps", 1, "--seq-len", 16,
                "--corpus", f"files:{text}", "--out", tmp_path / "x.safetensors", "--no-progress") == 2
    err = capsys.readouterr().err
    assert re.search(r"tokenizer mismatch: teacher .*hf:.*--tokenizer byte has 'byte' \(256 tokens\)", err), err
    assert not (tmp_path / "x.safetensors").exists()
    # the shipped (byte) student given a BPE tokenizer.json
    assert _cli("generate", "--tokenizer", folder / "tokenizer.json", "--max-new-tokens", 1) == 2
    err = capsys.readouterr().err
    assert re.search(r"tokenizer mismatch: model .* has tokenizer 'byte' \(256 tokens\), --tokenizer .* has 'hf:", err), err


def test_gqa_tied_student_exports_and_runs_in_the_golden_model(hf_folder, tmp_path):
    from bitmos.export import ModelExport
    from bitmos.model.export import export_model
    from bitmos.model.golden import GoldenModel
    teacher = load_hf_llama(hf_folder[0])
    student = make_student(teacher, "mos", experts=2).eval()
    exp = export_model(student, "small")
    assert len(exp.linears) == 14
    exp.save(tmp_path / "e.bmx")
    golden = GoldenModel(ModelExport.load(tmp_path / "e.bmx"), "small")
    assert golden.config.n_kv_heads == 2 and golden.config.tie_embeddings
    idx = torch.randint(0, teacher.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref, _ = student(idx)
        got, _ = golden(idx)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < 0.05, rel


def test_sharded_folder_and_mistral_qwen2_configs(hf_folder, tmp_path):
    from bitmos.errors import UnsupportedError
    from bitmos.model.hf import config_from_hf
    folder, hf = hf_folder
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists() and not (sharded / "model.safetensors").exists()
    (sharded / "tokenizer.json").write_text((folder / "tokenizer.json").read_text())
    model = load_hf_llama(sharded)
    idx = torch.randint(0, model.config.vocab_size, (1, 9))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], hf(idx).logits, atol=1e-5)
    base = {"hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 2, "num_hidden_layers": 1,
            "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
            "rope_theta": 1e6}
    c = config_from_hf(dict(base, model_type="mistral", sliding_window=1024))
    assert (c.n_kv_heads, c.head_dim, c.max_seq_len, c.rope_theta) == (2, 8, 1024, 1e6)
    assert config_from_hf(dict(base, model_type="qwen2", sliding_window=1024, use_sliding_window=False,
                               tie_word_embeddings=True)).tie_embeddings
    # a Qwen2 checkpoint carries q/k/v biases (kept, on the host); any other bias is refused by name, not dropped
    from bitmos.model.hf import model_from_state_dict
    q = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=hf.config.vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    qdir = tmp_path / "qwen2"
    q.save_pretrained(qdir)
    (qdir / "tokenizer.json").write_text((folder / "tokenizer.json").read_text())
    assert load_hf_llama(qdir).config.attn_bias
    sd = {k: v.detach() for k, v in q.state_dict().items()}
    sd["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(32)
    with pytest.raises(UnsupportedError, match=r"bias tensors \(e.g. model.layers.0.self_attn.o_proj.bias, 1 in all\)"):
        model_from_state_dict(config_from_hf(q.config), sd, "q")


@pytest.mark.parametrize("kind", ["qwen2", "llama3", "linear"])
def test_qwen2_biases_and_scaled_rope_match_transformers(kind, tmp_path):
    """Qwen2 (float q/k/v biases, kept on the host) and LLaMA with Llama 3 or linear RoPE scaling load from a
    folder with the logits of transformers; without the biases or the scaling they would differ."""
    from bitmos.model.config import ModelConfig
    from bitmos.model.transformer import Transformer
    tok = make_tokenizer()
    common = dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    if kind == "qwen2":
        hf_cfg, cls = transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM
    else:
        scaling = ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 16} if kind == "llama3" else {"rope_type": "linear", "factor": 4.0})
        hf_cfg, cls = transformers.LlamaConfig(rope_theta=500000.0, rope_scaling=scaling, **common), \
            transformers.LlamaForCausalLM
    torch.manual_seed(0)
    hf = cls(hf_cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0, 0.5)
    hf.save_pretrained(tmp_path)
    tok.save(str(tmp_path / "tokenizer.json"))
    model = load_hf_llama(tmp_path)
    assert model.config.attn_bias == (kind == "qwen2")
    assert (model.config.rope_scaling or {}).get("rope_type") == (None if kind == "qwen2" else kind)
    idx = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf(idx).logits
        got, _ = model(idx)
        assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
        # the same weights without the biases / the scaling: other logits (so the test sees both)
        plain = Transformer(model.config.replace(attn_bias=False, rope_scaling=None))
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("_bias")})
        assert not torch.allclose(plain(idx)[0], ref, atol=1e-3)
    # a binarized student keeps the biases on the host: the checkpoint and the export carry them
    student = make_student(model, "onebit").eval()
    if kind == "qwen2":
        assert torch.equal(student.layers[1].attn.k_bias, model.layers[1].attn.k_bias)
    path = tmp_path / "s.safetensors"
    save_checkpoint(path, student, tokenizer=model.tokenizer)
    back, _ = load_checkpoint(path)
    assert back.config == student.config
    with torch.no_grad():
        assert torch.equal(back(idx)[0], student(idx)[0])


def test_unsupported_rope_scaling_and_o_proj_bias_are_one_line():
    from bitmos.errors import UnsupportedError
    from bitmos.model.hf import config_from_hf
    base = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "vocab_size": 64,
            "num_hidden_layers": 1, "intermediate_size": 64}
    with pytest.raises(UnsupportedError, match="RoPE scaling 'yarn'"):
        config_from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(UnsupportedError, match="o_proj or MLP biases"):
        config_from_hf({**base, "attention_bias": True})
    with pytest.raises(Exception, match="llama3 needs a positive number 'low_freq_factor'"):
        ModelConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 16})
