"""Per-token activation quantization: the input contract of every binarized matmul in hardware."""

from __future__ import annotations

import torch


def act_quant_params(v: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes and per-token step of ``v`` (no gradient): returns ``(q, delta)``.

    ``q`` has the shape of ``v`` and holds integers (as ``v.dtype``); ``delta`` has shape ``v.shape[:-1] + (1,)``.
    See :func:`quantize_per_token` for the rule; ``v_hat = q * delta``.
    """
    assert bits is not None and 1 <= bits < 16, f"bits must be in 1..15 here, got {bits!r}"
    amax = v.detach().abs().amax(dim=-1, keepdim=True)             # (..., 1)
    if bits == 1:
        q = torch.where(v.detach() >= 0, 1.0, -1.0).to(v.dtype)
        return q, amax
    qmax = 2 ** (bits - 1) - 1
    delta = amax / qmax                                            # (..., 1)
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))   # all-zero token: q = 0, v_hat = 0
    q = torch.clamp(torch.round(v.detach() / safe), -qmax, qmax)
    return q, delta


def quantize_per_token(v: torch.Tensor, bits: int | None) -> torch.Tensor:
    """Quantize ``v`` per token (over the last dim) to ``bits`` bits, with a straight-through gradient.

    The rule (mirrored exactly by the integer golden model):

    * ``bits >= 2``: ``Q = 2**(bits-1) - 1``, ``delta = max|v| / Q`` per token,
      ``q = clamp(round(v / delta), -Q, Q)`` (``torch.round``: half to even), ``v_hat = q * delta``.
      A token that is all zeros has ``delta = 0`` and ``v_hat = 0``.
    * ``bits == 1``: ``q = +1 if v >= 0 else -1``, ``delta = max|v|``, ``v_hat = q * delta``.
    * ``bits`` None or 16: no quantization, ``v`` is returned unchanged (W1A16).

    Backward: the gradient of ``v_hat`` passes to ``v`` unchanged (``v + (v_hat - v).detach()``).
    """
    if bits is None or bits >= 16:
        return v
    q, delta = act_quant_params(v, bits)
    v_hat = q * delta
    return v + (v_hat - v).detach()
