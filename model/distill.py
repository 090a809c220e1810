"""Autoregressive distillation (FBI-LLM) and the hidden-state loss (BinaryMoS).

At every position the student's next-token distribution is trained toward the teacher's softmax (temperature 1):
``L_kd = mean_t  -sum_v p_teacher(v) log p_student(v)``. Optional terms: ``gt_weight`` mixes in the ground-truth
cross-entropy (``(1-w) L_kd + w L_ce``, FBI-LLM's ablation uses w = 0.5) and ``hidden_weight`` adds
``hidden_weight * sum_layers MSE(h_student, h_teacher)`` over the blocks' outputs (BinaryMoS uses 10).

:func:`train_only_scales` is the budgeted option for real models: only the learnable scales of the binarized
linears (FBI-LLM's alpha/beta, OneBit's g/h, BinaryMoS's experts S_in/S_out and router) are trained; the signs,
embeddings, norms and head stay as the scheme's init from the teacher left them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitmos.errors import BitmosUserError

# the learnable scale parameters of each scheme's linear (the schemes not named here compute theirs from W)
SCALE_PARAMS = {"fbi": ("alpha", "beta"), "onebit": ("g", "h"), "mos": ("s_in", "s_out", "router.weight")}


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of -sum p_teacher log p_student. Logits (B, T, V)."""
    assert student_logits.shape == teacher_logits.shape, \
        f"student logits {tuple(student_logits.shape)} != teacher {tuple(teacher_logits.shape)}"
    p_t = F.softmax(teacher_logits.float(), dim=-1)                       # (B, T, V)
    logp_s = F.log_softmax(student_logits.float(), dim=-1)                # (B, T, V)
    return -(p_t * logp_s).sum(-1).mean()


def distill_loss(student_logits, teacher_logits, targets=None, gt_weight: float = 0.0,
                 student_hidden=None, teacher_hidden=None, hidden_weight: float = 0.0):
    """Total loss and a dict of its parts (floats) for logging."""
    assert 0.0 <= gt_weight <= 1.0, f"gt_weight must be in [0, 1], got {gt_weight!r}"
    kd = soft_cross_entropy(student_logits, teacher_logits)
    loss, parts = (1.0 - gt_weight) * kd, {"kd": kd.item()}
    if gt_weight > 0:
        assert targets is not None, "gt_weight > 0 needs targets"
        ce = F.cross_entropy(student_logits.reshape(-1, student_logits.size(-1)), targets.reshape(-1))
        loss = loss + gt_weight * ce
        parts["ce"] = ce.item()
    if hidden_weight > 0:
        assert student_hidden is not None and teacher_hidden is not None, "hidden_weight > 0 needs hidden states"
        assert len(student_hidden) == len(teacher_hidden), \
            f"{len(student_hidden)} student vs {len(teacher_hidden)} teacher hidden states"
        mse = sum(F.mse_loss(s.float(), t.float()) for s, t in zip(student_hidden, teacher_hidden))
        loss = loss + hidden_weight * mse
        parts["hidden_mse"] = mse.item()
    return loss, parts


def make_student(teacher, scheme: str, from_teacher: bool = True, **overrides):
    """A student Transformer with the teacher's shape and ``scheme``; initialised from the teacher's weights
    (every binarized linear via its scheme's init) unless ``from_teacher`` is False (random init, from scratch)."""
    from bitmos.model.transformer import Transformer
    student = Transformer(teacher.config.replace(scheme=scheme, **overrides))
    if from_teacher:
        student.load_from_teacher(teacher)
    return student


def train_only_scales(model) -> int:
    """Freeze every parameter of ``model`` but its binarized linears' learnable scales (and MoS routers);
    returns the number of parameters left trainable. A scheme without learnable scales is an error."""
    scheme = model.config.scheme
    names = SCALE_PARAMS.get(scheme)
    if names is None:
        raise BitmosUserError(f"scheme {scheme!r} has no learnable scales to train alone (its scale is computed "
                              f"from the weights); --train scales needs one of {', '.join(SCALE_PARAMS)}")
    keep = set()
    for path, lin in model.binarized_linears():
        for n in names:
            if n == "router.weight" and getattr(lin, "router", None) is None:
                continue
            keep.add(f"{path}.{n}")
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep)
        n += p.numel() if name in keep else 0
    assert n > 0, f"no scale parameter found in a {scheme!r} model"
    return n
