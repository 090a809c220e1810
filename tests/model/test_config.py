import pytest

from bitmos.errors import ConfigError
from bitmos.model.config import SCHEMES, ModelConfig


def test_defaults_are_hardware_friendly():
    c = ModelConfig()
    assert c.dim % 64 == 0 and c.hidden_dim % 64 == 0
    assert c.head_dim == c.dim // c.n_heads


def test_round_trip():
    for s in SCHEMES:
        c = ModelConfig(scheme=s, experts=2, act_bits=4)
        assert ModelConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("field,value,msg", [
    ("dim", 0, r"ModelConfig.dim must be a positive int, got 0"),
    ("n_heads", 3, r"ModelConfig.dim must be divisible by n_heads=3, got 128"),
    ("scheme", "trinary", r"ModelConfig.scheme must be one of .*'ternary'.*got 'trinary'"),
    ("act_bits", 0, r"ModelConfig.act_bits must be an int in 1..16, or None/'off', got 0"),
    ("act_bits", 17, r"ModelConfig.act_bits .* got 17"),
    ("pb_fraction", 1.0, r"ModelConfig.pb_fraction must be in \[0, 1\), got 1.0"),
    ("experts", True, r"ModelConfig.experts must be a positive int, got True"),
    ("norm_eps", 0, r"ModelConfig.norm_eps must be > 0, got 0"),
    ("tokenizer", "wordpiece", r"ModelConfig.tokenizer must be 'byte', 'bpe:<name>' or 'hf:<name>', got 'wordpiece'"),
])
def test_errors_name_field_and_value(field, value, msg):
    with pytest.raises(ConfigError, match=msg):
        ModelConfig(**{field: value})


def test_act_bits_off_is_canonical_none():
    assert ModelConfig(act_bits=16).act_bits is None
    assert ModelConfig(act_bits="off").act_bits is None


def test_from_dict_rejects_unknown_and_non_dict():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['width'\]"):
        ModelConfig.from_dict({"width": 3})
    with pytest.raises(ConfigError, match="needs a dict, got list"):
        ModelConfig.from_dict([])
