"""The one model-shape loader (compiler.shapes.load_shape) and the module walk."""

import json

import pytest

from bitmos.compiler import MODEL_SHAPES, compile_spec, llama_linears, load_shape, synthetic_spec
from bitmos.compiler.shapes import kv_cache_bytes, layer_shape, n_layers
from bitmos.config import AcceleratorConfig, preset_config
from bitmos.errors import ConfigError, FormatError, UnsupportedError

HF = dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
          num_attention_heads=9, num_key_value_heads=3, head_dim=64)


def test_named_hf_bitmos_and_wrapped_shapes_walk_the_same_linears(tmp_path):
    bitmos_form = {"dim": 576, "hidden_dim": 1536, "n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "head_dim": 64}
    (tmp_path / "config.json").write_text(json.dumps(HF))
    (tmp_path / "ckpt.json").write_text(json.dumps({"model_config": bitmos_form, "step": 3}))
    walks = [llama_linears(load_shape(s)) for s in (HF, bitmos_form, tmp_path / "config.json",
                                                     str(tmp_path / "ckpt.json"))]
    assert all(w == walks[0] for w in walks)
    q, k = walks[0][0], walks[0][1]
    assert q == ("layers.0.attn.q_proj", 576, 9 * 64) and k == ("layers.0.attn.k_proj", 576, 3 * 64)
    assert n_layers(HF) == 30 and len(llama_linears(layer_shape(HF))) == 7


def test_named_and_preset_shapes():
    s = load_shape("llama-2-7b")
    assert s["name"] == "llama-2-7b" and s["dim"] == MODEL_SHAPES["llama-2-7b"]["dim"]
    t = load_shape({"preset": "llama-2-7b", "n_layers": 2})
    assert t["n_layers"] == 2 and t["dim"] == 4096 and len(llama_linears(t)) == 14


def test_kv_cache_bytes_follow_the_heads():
    # K and V of every layer and kv head: head_dim int8 mantissas plus one exponent byte
    assert kv_cache_bytes(load_shape("llama-2-7b")) == 32 * 2 * 32 * (128 + 1)
    assert kv_cache_bytes(HF) == 30 * 2 * 3 * (64 + 1)                  # grouped-query: the 3 kv heads only
    bitnet = load_shape("bitnet-b1.58-2b")
    assert kv_cache_bytes(bitnet) == 30 * 2 * 5 * (128 + 1)
    assert llama_linears(bitnet)[1] == ("layers.0.attn.k_proj", 2560, 5 * 128)


@pytest.mark.parametrize("bad, err, text", [
    ("no-such-model", ConfigError, "neither a file nor a built-in shape"),
    ({"dim": 64, "n_layers": 1, "n_heads": 4}, ConfigError, "missing 'hidden_dim'"),
    ({"dim": 64, "hidden_dim": 0, "n_layers": 1, "n_heads": 4}, ConfigError, "positive integer"),
    ({"foo": 1}, ConfigError, "neither 'hidden_size'"),
    (dict(HF, model_type="gpt2"), UnsupportedError, "not a LLaMA-family"),
    ({"preset": "no-such", "n_layers": 1}, ConfigError, "neither a file nor a built-in"),
])
def test_bad_shapes_name_the_problem(bad, err, text):
    with pytest.raises(err, match=text):
        load_shape(bad)


def test_unreadable_json_is_a_format_error(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("{not json")
    with pytest.raises(FormatError, match="not a readable JSON"):
        load_shape(p)


def test_a_layer_that_does_not_fit_names_the_field_to_grow():
    cfg = preset_config("tiny")
    spec = synthetic_spec("big", 4096, 64, cfg, seed=0, materialize=False)
    with pytest.raises(UnsupportedError) as exc:
        compile_spec(spec, cfg, 1)
    assert exc.value.field in {"xbuf_kib", "sbuf_kib", "qbuf_kib", "wbuf_kib"}
    # growing that field (and only that) gets past this error
    grown = AcceleratorConfig.from_dict(dict(cfg.to_dict(), **{exc.value.field: getattr(cfg, exc.value.field) * 8}))
    try:
        compile_spec(synthetic_spec("big", 4096, 64, grown, seed=0, materialize=False), grown, 1)
    except UnsupportedError as again:
        assert again.field != exc.value.field
