import pytest
import torch

from bitmos.errors import BitmosUserError
from bitmos.model.data import (ByteTokenizer, builtin_corpus, encode_corpus, eval_windows, get_batch,
                               get_tokenizer, is_validation, load_corpus)


def test_byte_tokenizer_round_trip():
    t = ByteTokenizer()
    s = "sign(0) = +1, ünïcode"
    assert t.decode(t.encode(s)) == s and max(t.encode(s)) < 256


def test_builtin_corpus_is_deterministic_and_split(tmp_path):
    train1, val1 = builtin_corpus(tmp_path / "a")
    train2, val2 = builtin_corpus(tmp_path / "b")
    assert train1 == train2 and val1 == val2
    assert len(train1) > 200_000 and len(val1) > 10_000
    assert builtin_corpus(tmp_path / "a") == (train1, val1)   # from the cache
    assert is_validation("x") == is_validation("x")


def test_batches_and_windows():
    toks = torch.arange(100)
    x, y = get_batch(toks, 3, 10, torch.Generator().manual_seed(0))
    assert x.shape == (3, 10) and torch.equal(y, x + 1)
    x, y = eval_windows(toks, 10, 45)
    assert x.shape == (4, 10) and torch.equal(x[1], torch.arange(10, 20)) and torch.equal(y, x + 1)


def test_bpe_tokenizer_trains_locally(tmp_path):
    pytest.importorskip("tokenizers")
    from bitmos.model.data import BPETokenizer
    text = "binary mixture of scales " * 200
    tok = BPETokenizer.train([text], vocab_size=300)
    ids = tok.encode("binary scales")
    assert tok.decode(ids) == "binary scales" and len(ids) < len("binary scales")
    tok.save(tmp_path / "mini.json")
    assert get_tokenizer("bpe:mini", tmp_path).encode("binary") == tok.encode("binary")
    assert encode_corpus("binary", tok).dtype == torch.int64


def test_user_errors(tmp_path):
    with pytest.raises(BitmosUserError, match="unknown corpus 'web'"):
        load_corpus("web")
    with pytest.raises(BitmosUserError, match="cannot read text file"):
        load_corpus(f"files:{tmp_path}/nope.txt")
    with pytest.raises(BitmosUserError, match="BPE tokenizer file .* not found"):
        get_tokenizer("bpe:nope", tmp_path)
