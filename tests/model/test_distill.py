import copy
import math

import pytest
import torch

from bitmos.errors import BitmosUserError
from bitmos.model.checkpoint import load_checkpoint
from bitmos.model.distill import distill_loss, make_student, soft_cross_entropy
from bitmos.model.train import TrainArgs, lr_at, train

from .model_helpers import tiny_config


def test_soft_ce_equals_ce_for_one_hot_teacher_and_is_minimal_at_teacher():
    s = torch.randn(2, 3, 5)
    tgt = torch.randint(0, 5, (2, 3))
    t = torch.nn.functional.one_hot(tgt, 5).float() * 1e4
    ce = torch.nn.functional.cross_entropy(s.view(-1, 5), tgt.view(-1))
    assert torch.allclose(soft_cross_entropy(s, t), ce, atol=1e-4)
    t = torch.randn(2, 3, 5)
    assert soft_cross_entropy(t, t) <= soft_cross_entropy(s, t)


def test_distill_loss_parts():
    s, t = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    y = torch.randint(0, 6, (1, 4))
    hs, ht = [torch.ones(1, 4, 2)], [torch.zeros(1, 4, 2)]
    loss, parts = distill_loss(s, t, y, gt_weight=0.5, student_hidden=hs, teacher_hidden=ht, hidden_weight=10)
    assert math.isclose(loss.item(), 0.5 * parts["kd"] + 0.5 * parts["ce"] + 10 * 1.0, rel_tol=1e-5)


def test_lr_schedule():
    a = TrainArgs(steps=100, warmup=10, lr=1.0, min_lr=0.1)
    assert lr_at(0, a) == pytest.approx(0.1) and lr_at(10, a) == pytest.approx(1.0)
    assert lr_at(100, a) == pytest.approx(0.1) and lr_at(55, a) == pytest.approx(0.55)


def test_train_args_errors():
    with pytest.raises(BitmosUserError, match="TrainArgs.steps must be a positive int, got 0"):
        TrainArgs(steps=0)
    with pytest.raises(BitmosUserError, match=r"TrainArgs.gt_weight must be in \[0, 1\], got 2"):
        TrainArgs(gt_weight=2)


def _args(tmp_path, corpus, name, **kw):
    base = dict(out=str(tmp_path / f"{name}.safetensors"), steps=30, batch_size=8, seq_len=32, lr=3e-3,
                warmup=5, eval_interval=0, eval_tokens=2048, ckpt_interval=0, corpus=corpus, progress=False)
    base.update(kw)
    return TrainArgs(**base)


def test_teacher_then_distillation_lowers_loss(tmp_path, text_corpus):
    cfg = tiny_config(vocab_size=256, max_seq_len=64)
    t = train(cfg, _args(tmp_path, text_corpus, "teacher", steps=60))
    teacher = t["model"]
    assert t["val"]["ppl"] < 20   # random init starts at ~256
    student = make_student(teacher, "mos", from_teacher=False, experts=2, act_bits=8)
    before = copy.deepcopy(student)
    args = _args(tmp_path, text_corpus, "student", hidden_weight=1.0, steps=40)
    after = train(student.config, args, teacher=teacher, model=student)["model"]
    from bitmos.model.data import ByteTokenizer, encode_corpus, get_batch, load_corpus
    toks = encode_corpus(load_corpus(text_corpus)[1], ByteTokenizer())
    x, y = get_batch(toks, 8, 32, torch.Generator().manual_seed(5))   # held-out batch
    with torch.no_grad():
        tl = teacher(x)[0]
        entropy = soft_cross_entropy(tl, tl)
        kl = [soft_cross_entropy(m.eval()(x)[0], tl) - entropy for m in (before, after)]   # KL(teacher || student)
    assert kl[1] < 0.75 * kl[0], kl
    m, meta = load_checkpoint(args.out)
    assert meta["step"] == 40 and meta["train_args"]["hidden_weight"] == 1.0 and m.config.scheme == "mos"


def test_resume_continues_exactly(tmp_path, text_corpus):
    cfg = tiny_config(vocab_size=256, max_seq_len=64, scheme="sign")
    full = train(cfg, _args(tmp_path, text_corpus, "full", steps=12))["model"]
    train(cfg, _args(tmp_path, text_corpus, "part", steps=6, ckpt_interval=6))
    resumed = train(cfg, _args(tmp_path, text_corpus, "part", steps=12), resume=True)["model"]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_resume_without_checkpoint_is_user_error(tmp_path, text_corpus):
    with pytest.raises(BitmosUserError, match="cannot resume"):
        train(tiny_config(vocab_size=256), _args(tmp_path, text_corpus, "none"), resume=True)


def test_tiny_ternary_model_trains_on_the_builtin_corpus(tmp_path):
    """A tiny ternary (BitNet b1.58) model trained for a few steps on the built-in corpus: the held-out loss goes
    down, and training moves weights across the trit thresholds (the STE reaches the latent weights)."""
    from bitmos.model.data import ByteTokenizer, encode_corpus, load_corpus
    from bitmos.model.train import evaluate
    from bitmos.model.transformer import Transformer
    cfg = tiny_config(vocab_size=256, max_seq_len=64, scheme="ternary", act_bits=8)
    model = Transformer(cfg)
    before = copy.deepcopy(model)
    val = encode_corpus(load_corpus("builtin")[1], ByteTokenizer())
    loss0 = evaluate(model, val, 32, 2048)["loss"]
    args = _args(tmp_path, "builtin", "ternary", steps=30)
    res = train(cfg, args, model=model)
    assert res["val"]["loss"] < loss0 - 0.5, (loss0, res["val"]["loss"])     # ln 256 = 5.55 at the start
    moved = sum(int((a.trits() != b.trits()).sum())
                for (_, a), (_, b) in zip(before.binarized_linears(), res["model"].binarized_linears()))
    assert moved > 0
    m, meta = load_checkpoint(args.out)
    assert m.config.scheme == "ternary" and meta["step"] == 30


def test_train_only_scales_freezes_all_but_the_scales_and_routers():
    from bitmos.model.distill import SCALE_PARAMS, train_only_scales
    from bitmos.model.transformer import Transformer
    teacher = Transformer(tiny_config())
    for scheme, names in SCALE_PARAMS.items():
        student = make_student(teacher, scheme, experts=2)
        n = train_only_scales(student)
        trainable = sorted(k for k, p in student.named_parameters() if p.requires_grad)
        assert trainable and all(k.split(".", 4)[-1] in names for k in trainable), (scheme, trainable)
        assert n == sum(p.numel() for p in student.parameters() if p.requires_grad)
        assert len(trainable) == len(names) * len(student.binarized_linears()), scheme
    for scheme in ("sign", "bitnet", "pb", "ternary", "float"):
        with pytest.raises(BitmosUserError, match=f"scheme '{scheme}' has no learnable scales to train alone"):
            train_only_scales(make_student(teacher, scheme))


def test_scales_only_distillation_moves_only_the_scales(tmp_path, text_corpus):
    from bitmos.model.transformer import Transformer
    teacher = Transformer(tiny_config(vocab_size=256, max_seq_len=64))
    student = make_student(teacher, "onebit", act_bits=8)
    before = copy.deepcopy(student.state_dict())
    args = _args(tmp_path, text_corpus, "scales", steps=3, train_only="scales")
    after = train(student.config, args, teacher=teacher, model=student)["model"].state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.endswith((".g", ".h")) for k in moved), moved
    assert load_checkpoint(args.out)[1]["train_args"]["train_only"] == "scales"
    with pytest.raises(BitmosUserError, match="TrainArgs.train_only must be 'all' or 'scales', got 'signs'"):
        TrainArgs(train_only="signs")
