"""Checkpoints: one ``.safetensors`` file whose header metadata holds the JSON config; nothing is unpickled.

Metadata keys (all strings): ``format`` = "bitmos-model", ``version``, ``config`` (ModelConfig JSON),
``train_args`` (JSON), ``step``, ``tokenizer`` (the tokenizer's own serialized JSON, for every model whose config
names a non-byte tokenizer: the tokenizer travels with the weights) and ``sha256``: the SHA-256 of every other
metadata entry and every tensor (name, dtype, shape, bytes), verified on load, so a changed byte anywhere is refused
instead of loading changed weights. Version 2 added the checksum; a version 1 file is refused with the command that
upgrades it (:func:`upgrade_checkpoint`). Tied embeddings (``config.tie_embeddings``) are stored once, under
``tok_embeddings.weight``. With ``compact=True`` large tensors (>= 4096 elements) are stored as bfloat16:
the sign of every latent weight is preserved exactly, so a binarized model's bits do not change. The latent
weights of a ``ternary`` linear stay float32 (rounding W and mean|W| to bfloat16 could move a weight across the
0.5 * mean|W| threshold and change its trit; see ``BinarizedLinear.bf16_keeps_bits``).

Resumable training state (optimizer, data RNG) goes beside it in ``<name>.trainer.pt`` via :func:`save_trainer_state`,
read back with ``torch.load(weights_only=True)`` (tensors, numbers and containers only).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from bitmos.errors import FormatError
from bitmos.model.config import ModelConfig

try:
    from bitmos.fileio import write_bytes_atomic
except ImportError:  # pragma: no cover
    from bitmos.model.data import write_bytes_atomic

FORMAT = "bitmos-model"
VERSION = "2"
#: Largest max_seq_len x head_dim a loaded config may ask for (each rotary table is this many floats, 1 GiB).
MAX_ROPE_ENTRIES = 1 << 28


def save_checkpoint(path, model, train_args: dict | None = None, step: int = 0, compact: bool = False,
                    tokenizer=None) -> None:
    """Atomically write ``model`` (a Transformer) and its config to ``path``.

    ``tokenizer`` (a :class:`~bitmos.model.data.BPETokenizer`) is embedded in the metadata; a model whose config
    names a non-byte tokenizer needs one (or the one attached to the model as ``model.tokenizer``).
    """
    from bitmos.model.binarize import BinarizedLinear
    from bitmos.model.data import check_tokenizer
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    tied = model.tied_keys() if hasattr(model, "tied_keys") else {}
    # latent weights whose stored bits a bfloat16 rounding could change (ternary): kept float32 under compact
    exact = {f"{n}.weight" for n, m in model.named_modules()
             if isinstance(m, BinarizedLinear) and not m.bf16_keeps_bits}
    sd = {}
    for k, v in model.state_dict().items():
        if k in tied:
            continue
        v = v.detach().contiguous().cpu()
        if compact and v.is_floating_point() and v.numel() >= 4096 and k not in exact:
            v = v.to(torch.bfloat16)
        sd[k] = v.clone()
    meta = {"format": FORMAT, "version": VERSION, "config": json.dumps(model.config.to_dict()),
            "train_args": json.dumps(train_args or {}), "step": str(int(step))}
    if model.config.tokenizer != "byte":
        if tokenizer is None:
            raise FormatError(f"model uses tokenizer {model.config.tokenizer!r} but none was given to save with it")
        check_tokenizer(model.config, tokenizer, "model")
        meta["tokenizer"] = tokenizer.to_json()
    _write(path, sd, meta)


def _write(path, sd: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    meta = dict(meta, sha256=checkpoint_digest(sd, meta))
    write_bytes_atomic(path, st_save(sd, metadata=meta))


def checkpoint_digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """SHA-256 over the metadata (without ``sha256``) and every tensor as stored: name, dtype, shape, bytes."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for key in sorted(tensors):
        t = tensors[key].detach().contiguous().cpu()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_checkpoint(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata with parsed ``config``/``train_args``/``step``, float32 state dict). Raises FormatError."""
    path = Path(path)
    if path.exists() and not path.is_file():   # /dev/zero would be read for ever
        from bitmos.fileio import why_not_a_file
        raise FormatError(f"checkpoint {path} {why_not_a_file(path)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    if len(data) < 8:
        raise FormatError(f"checkpoint {path} is truncated ({len(data)} bytes)")
    try:
        hlen = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + hlen])
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("__metadata__ is not a table")
        tensors = st_load(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError, RecursionError) as exc:
        raise FormatError(f"checkpoint {path} is not a valid safetensors file: {exc}") from None
    if meta.get("format") != FORMAT:
        raise FormatError(f"checkpoint {path} is not a bitmos model (format={meta.get('format')!r})")
    if meta.get("version") == "1":
        raise FormatError(f"checkpoint {path} has version '1' (written before checkpoints carried a checksum); "
                          f"upgrade it once with: python -m bitmos.model.checkpoint {path}")
    if meta.get("version") != VERSION:
        raise FormatError(f"checkpoint {path} has version {meta.get('version')!r}, this bitmos reads {VERSION!r}")
    if meta.get("sha256") != checkpoint_digest(tensors, meta):
        raise FormatError(f"checkpoint {path}: checksum mismatch: the file is corrupt")
    try:
        out = {"config": json.loads(meta["config"]), "train_args": json.loads(meta.get("train_args", "{}")),
               "step": int(meta.get("step", "0")), "tokenizer": meta.get("tokenizer")}
        if not isinstance(out["config"], dict) or not isinstance(out["train_args"], dict):
            raise ValueError("config and train_args must be JSON objects")
    except (KeyError, ValueError, RecursionError) as exc:
        raise FormatError(f"checkpoint {path} has corrupt metadata: {exc}") from None
    sd = {k: (v.float() if v.dtype == torch.bfloat16 else v) for k, v in tensors.items()}
    return out, sd


def load_checkpoint(path, map_location: str = "cpu"):
    """Rebuild the Transformer stored in ``path``: returns ``(model, meta)`` (model in eval mode)."""
    from bitmos.model.transformer import Transformer
    meta, sd = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise FormatError(f"checkpoint {path} has an invalid model config: {exc}") from exc
    # a lower bound of the config's parameters (q/o projections, the MLP, the embedding) against what the file
    # holds: a config naming a far bigger model is refused before a model of that size is allocated (a near
    # miss is left to the tensor-by-tensor comparison below, whose message names the tensors)
    c = config
    least = c.n_layers * (2 * c.dim * c.n_heads * c.head_dim + 3 * c.dim * c.hidden_dim) + c.vocab_size * c.dim
    if c.scheme == "mos":
        least += c.n_layers * c.experts * c.dim      # the scale experts of one projection per layer
    held = sum(v.numel() for v in sd.values())
    if least > 4 * held + (1 << 20):
        raise FormatError(f"checkpoint {path} does not match its config: the config needs at least {least:,} "
                          f"parameters, the file holds {held:,}")
    # the rotary tables are computed, not stored: bound them on their own
    if c.max_seq_len * c.head_dim > MAX_ROPE_ENTRIES:
        raise FormatError(f"checkpoint {path}: max_seq_len {c.max_seq_len} x head_dim {c.head_dim} "
                          f"exceeds {MAX_ROPE_ENTRIES:,} rotary table entries")
    model = Transformer(config)
    for k, src in model.tied_keys().items():   # stored once; the model shares one tensor
        if k not in sd and src in sd:
            sd[k] = sd[src]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise FormatError(f"checkpoint {path} does not match its config: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    for k, v in sd.items():
        if v.shape != expected[k].shape:
            raise FormatError(f"checkpoint {path}: tensor {k} has shape {tuple(v.shape)}, "
                              f"config needs {tuple(expected[k].shape)}")
    model.load_state_dict(sd)
    model.eval()
    if config.tokenizer != "byte":
        from bitmos.model.data import tokenizer_for
        model.tokenizer = tokenizer_for(config, meta.get("tokenizer"), path.parent if isinstance(path, Path)
                                        else Path(path).parent)
    return model.to(map_location), meta


def upgrade_checkpoint(path) -> None:
    """Rewrite a version 1 checkpoint (no checksum) in place as the current version, tensors unchanged.

    Run it once, on a file you trust: a version 1 file has no checksum, so corruption cannot be detected."""
    path = Path(path)
    data = path.read_bytes()
    meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
    if meta.get("format") != FORMAT or meta.get("version") not in ("1", VERSION):
        raise FormatError(f"{path} is not a bitmos checkpoint of version 1")
    if meta.get("version") == VERSION:
        read_checkpoint(path)   # already current: only check it
        return
    tensors = st_load(data)
    _write(path, tensors, {k: v for k, v in meta.items() if k != "sha256"} | {"version": VERSION})
    read_checkpoint(path)


#: The trainer state file: this magic, the SHA-256 of the payload (32 bytes), then a ``torch.save`` payload.
TRAINER_MAGIC = b"BITMOS-TRAINER-STATE-2\n"
_TRAINER_KEYS = {"optimizer", "step", "rng", "extra"}


def save_trainer_state(path, optimizer, step: int, rng_state: torch.Tensor, extra: dict | None = None) -> None:
    """Atomically write the optimizer state, the step and the RNG state, checksummed (:data:`TRAINER_MAGIC`)."""
    buf = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "step": int(step), "rng": rng_state,
                "extra": extra or {}}, buf)
    payload = buf.getvalue()
    write_bytes_atomic(path, TRAINER_MAGIC + hashlib.sha256(payload).digest() + payload)


def load_trainer_state(path) -> dict:
    """The dict :func:`save_trainer_state` wrote, checked: the checksum, then every entry's type.

    A file without the magic (written before the checksum) is read if its entries check out. Everything else
    (missing, truncated, corrupt, of the wrong types, a pickle that needs code) is a one-line FormatError.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FormatError(f"trainer state {path} not found") from None
    except IsADirectoryError:
        raise FormatError(f"trainer state {path} is a folder, not a file") from None
    if data.startswith(TRAINER_MAGIC):
        digest, payload = data[len(TRAINER_MAGIC):len(TRAINER_MAGIC) + 32], data[len(TRAINER_MAGIC) + 32:]
        if len(digest) < 32 or hashlib.sha256(payload).digest() != digest:
            raise FormatError(f"trainer state {path}: checksum mismatch: the file is corrupt or truncated")
    else:
        payload = data   # an unchecksummed state of an older bitmos: only the type checks below guard it
    try:
        st = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncation, disallowed globals
        raise FormatError(f"trainer state {path} is corrupt or unsafe: {_one_line(exc)}") from None
    bad = _trainer_state_problem(st)
    if bad:
        raise FormatError(f"trainer state {path} is not a bitmos trainer state: {bad}")
    return st


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _trainer_state_problem(st) -> str | None:
    if not isinstance(st, dict) or set(st) != _TRAINER_KEYS:
        return f"expected a dict with {sorted(_TRAINER_KEYS)}, got {type(st).__name__}" + (
            f" with {sorted(map(str, st))[:6]}" if isinstance(st, dict) else "")
    if isinstance(st["step"], bool) or not isinstance(st["step"], int) or st["step"] < 0:
        return f"step {st['step']!r} is not a non-negative integer"
    rng = st["rng"]
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.dim() != 1:
        return "rng is not a 1-D uint8 tensor"
    opt = st["optimizer"]
    if (not isinstance(opt, dict) or not isinstance(opt.get("state"), dict)
            or not isinstance(opt.get("param_groups"), list)
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"])):
        return "optimizer is not an optimizer state (state, param_groups)"
    if not isinstance(st["extra"], dict):
        return "extra is not a dict"
    return None


def _short(v) -> str:
    r = " ".join(repr(v).split())
    return r if len(r) <= 60 else r[:57] + "..."


def _same_kind(a, b) -> bool:
    """``a`` (read from a file) may stand where the optimizer holds ``b``: same type, numbers finite."""
    if isinstance(b, bool) or b is None or isinstance(b, str):
        return type(a) is type(b) and (not isinstance(b, str) or a == b or len(a) < 100)
    if isinstance(b, (int, float)):
        return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)
    if isinstance(b, (tuple, list)):
        return (isinstance(a, (tuple, list)) and len(a) == len(b)
                and all(_same_kind(x, y) for x, y in zip(a, b)))
    if isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
    return type(a) is type(b)


def restore_trainer_state(path, optimizer, checkpoint_step: int) -> int:
    """Load ``path`` into ``optimizer`` and the torch RNG; returns the step. The state must be the one saved with
    the checkpoint being resumed (same step) and fit ``optimizer`` tensor by tensor, else a FormatError."""
    st = load_trainer_state(path)
    if st["step"] != checkpoint_step:
        raise FormatError(f"trainer state {path} is of step {st['step']}, the checkpoint of step {checkpoint_step}: "
                          "they were not saved together; resume from a matching pair or start afresh")
    flat = [q for g in optimizer.param_groups for q in g["params"]]
    saved = st["optimizer"]["param_groups"]
    ids = [i for g in saved for i in g["params"]]
    if (len(saved) != len(optimizer.param_groups) or len(ids) != len(flat)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or len(set(ids)) != len(ids)):
        raise FormatError(f"trainer state {path} does not fit this model's optimizer (parameter groups differ)")
    for i, (a, b) in enumerate(zip(saved, optimizer.param_groups)):
        keys = set(b) - {"params"}
        if set(a) - {"params"} != keys or len(a["params"]) != len(b["params"]):
            raise FormatError(f"trainer state {path}: parameter group {i} does not fit this model's optimizer")
        for k in sorted(keys):
            if not _same_kind(a[k], b[k]):
                raise FormatError(f"trainer state {path}: parameter group {i} has {k} = {_short(a[k])}, "
                                  f"this optimizer {_short(b[k])}")
        # the optimizer's own constructor checks the ranges (0 <= beta < 1, lr >= 0, eps >= 0, ...)
        accepted = inspect.signature(type(optimizer)).parameters
        try:
            type(optimizer)([torch.zeros(1, requires_grad=True)], **{k: a[k] for k in keys if k in accepted})
        except (ValueError, TypeError, RuntimeError) as exc:
            raise FormatError(f"trainer state {path}: parameter group {i}: {_one_line(exc)}") from None
    by_id = dict(zip(ids, flat))
    adam = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
    for pid, state in st["optimizer"]["state"].items():
        p = by_id.get(pid) if isinstance(pid, int) else None
        if p is None or not isinstance(state, dict):
            raise FormatError(f"trainer state {path}: optimizer state for unknown parameter {pid!r}")
        if adam:
            amsgrad = next(g for g in saved if pid in g["params"]).get("amsgrad")
            want = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if amsgrad else set())
            if set(state) != want:
                raise FormatError(f"trainer state {path}: optimizer state of parameter {pid} has "
                                  f"{sorted(map(str, state))}, Adam needs {sorted(want)}")
        for name, v in state.items():
            where = f"trainer state {path}: optimizer state {name!r} of parameter {pid}"
            if not isinstance(v, (torch.Tensor, int, float)) or isinstance(v, bool):
                raise FormatError(f"{where} is a {type(v).__name__}")
            if isinstance(v, torch.Tensor) and (not v.is_floating_point() or not bool(torch.isfinite(v).all())):
                raise FormatError(f"{where} is not a finite floating-point tensor")
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                raise FormatError(f"{where} has shape {tuple(v.shape)}, the parameter {tuple(p.shape)}")
            if adam and name != "step" and not (isinstance(v, torch.Tensor) and v.shape == p.shape):
                raise FormatError(f"{where} is not a tensor of the parameter's shape {tuple(p.shape)}")
            if adam and name == "step" and ((isinstance(v, torch.Tensor) and v.dim() != 0) or not float(v) >= 0):
                raise FormatError(f"{where} is not a scalar >= 0")
    try:
        optimizer.load_state_dict(st["optimizer"])
        torch.set_rng_state(st["rng"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise FormatError(f"trainer state {path} does not fit this model's optimizer: {_one_line(exc)}") from None
    return st["step"]


def trainer_state_path(ckpt_path) -> Path:
    p = Path(ckpt_path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".trainer.pt")


# -- shipped checkpoints ---------------------------------------------------------------------------------------

ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED = {"teacher": "teacher.safetensors", "student": "student-mos4-a8.safetensors",
           "student-ternary": "student-ternary-a8.safetensors", "student-fbi": "student-fbi-a8.safetensors"}
#: what ``bitmos eval`` without a checkpoint argument evaluates (the pair every hardware command runs)
SHIPPED_PAIR = ("teacher", "student")


def shipped_path(name: str = "student") -> Path:
    """Path of a checkpoint shipped in ``bitmos/model/assets``: ``"teacher"`` (float), ``"student"`` (BinaryMoS,
    E = 4, A8), ``"student-ternary"`` (BitNet b1.58, A8; runs on configs with weight_bits >= 2) or ``"student-fbi"``
    (FBI-LLM, A8; runs on configs with a router, experts >= 2)."""
    if name not in SHIPPED:
        raise FormatError(f"no shipped checkpoint {name!r}; have {sorted(SHIPPED)}")
    return ASSETS / SHIPPED[name]


def checkpoint_arg(arg: str | None) -> Path:
    """A command's ``--checkpoint``: a path, or the name of a shipped checkpoint (``student-ternary``) when no
    such file exists, or the shipped student when not given; so the shipped ones work from any folder."""
    if not arg:
        return shipped_path("student")
    p = Path(arg)
    return shipped_path(arg) if arg in SHIPPED and not p.exists() else p


def load_shipped(name: str = "student"):
    """``(model, meta)`` of a shipped checkpoint (eval mode)."""
    return load_checkpoint(shipped_path(name))


if __name__ == "__main__":  # python -m bitmos.model.checkpoint FILE...: upgrade version 1 checkpoints
    import sys

    for name in sys.argv[1:]:
        upgrade_checkpoint(name)
        print(f"{name}: version {VERSION}, checksum verified")
