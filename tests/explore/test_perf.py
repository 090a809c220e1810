"""explore.perf: a model whose layers the config's buffers cannot hold is refused naming the presets that can."""

import pytest

from bitmos.config import preset_config
from bitmos.errors import UnsupportedError
from bitmos.explore.perf import estimate, presets_holding

# SmolLM2-135M's shapes (hidden 576, intermediate 1536, 9 / 3 heads of 64): K = 576 needs 288 SBUF lines on small
SMOL = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
        "num_hidden_layers": 1, "vocab_size": 49152, "head_dim": 64, "name": "smol-1-layer"}


def test_presets_holding_a_real_layer():
    walk = [("q", 576, 576, 0), ("down", 1536, 576, 0)]
    got = presets_holding(walk)
    assert "small" not in got and "tiny" not in got and {"medium", "asic32"} <= set(got)
    assert set(presets_holding([("toy", 128, 128, 0)])) >= {"tiny", "small", "medium", "asic32"}


def test_estimate_refusal_names_the_presets_that_fit():
    with pytest.raises(UnsupportedError, match=r"SBUF has 256; the presets whose buffers hold every layer of this "
                                               r"model: .*medium") as exc:
        estimate(SMOL, preset_config("small"), prefill=0, decode=1)
    assert exc.value.field == "sbuf_kib"
    assert estimate(SMOL, preset_config("medium"), prefill=0, decode=1)["decode"]["tokens"] == 1
