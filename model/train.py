"""Training loops: the float teacher (plain language modelling) and the student (autoregressive distillation).

AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), linear warmup then cosine decay to ``min_lr``, gradient
clipping at 1.0, tqdm progress. Single process by default; under ``torchrun`` (env ``WORLD_SIZE`` > 1) the model is
wrapped in DistributedDataParallel on the gloo backend (CPU) and every rank draws its own batches.
Resumable: the checkpoint holds the model, ``<out>.trainer.pt`` the optimizer state, the step and the RNG state.
Batches are drawn from a generator seeded by (seed, rank, step), so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from bitmos.errors import BitmosUserError
from bitmos.model.checkpoint import (load_checkpoint, restore_trainer_state, save_checkpoint, save_trainer_state,
                                     trainer_state_path)
from bitmos.model.config import ModelConfig
from bitmos.model.data import (check_tokenizer, encode_corpus, eval_windows, get_batch, get_tokenizer,
                               load_corpus)
from bitmos.model.distill import distill_loss
from bitmos.model.transformer import Transformer


@dataclass
class TrainArgs:
    out: str = "out/model.safetensors"   # checkpoint written here (and <out>.trainer.pt for resuming)
    steps: int = 1000
    batch_size: int = 16                 # sequences per step per rank
    seq_len: int = 128
    lr: float = 2e-3
    min_lr: float | None = None          # cosine floor; default lr / 10
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 1337
    eval_interval: int = 250             # 0 = only at the end
    eval_tokens: int = 32768             # validation tokens per evaluation
    ckpt_interval: int = 250             # 0 = only at the end
    corpus: str = "builtin"              # builtin | files:<paths> | hf:<name>
    cache_dir: str | None = None
    # distillation (used when a teacher is given)
    teacher: str | None = None           # teacher checkpoint path (recorded for provenance)
    from_teacher: bool = True            # student starts from the teacher's weights
    gt_weight: float = 0.0
    hidden_weight: float = 0.0
    train_only: str = "all"              # "all" | "scales": only the binarized linears' scales/routers learn
    compact: bool = False                # store large tensors as bfloat16 in the final checkpoint
    progress: bool = True

    def __post_init__(self):
        for f in ("steps", "batch_size", "seq_len"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise BitmosUserError(f"TrainArgs.{f} must be a positive int, got {getattr(self, f)!r}")
        if not self.lr > 0:
            raise BitmosUserError(f"TrainArgs.lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.gt_weight <= 1.0:
            raise BitmosUserError(f"TrainArgs.gt_weight must be in [0, 1], got {self.gt_weight!r}")
        if self.train_only not in ("all", "scales"):
            raise BitmosUserError(f"TrainArgs.train_only must be 'all' or 'scales', got {self.train_only!r}")


def lr_at(step: int, args: TrainArgs) -> float:
    """Linear warmup for ``warmup`` steps, then cosine from ``lr`` to ``min_lr`` at ``steps``."""
    min_lr = args.lr / 10 if args.min_lr is None else args.min_lr
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    ratio = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (args.lr - min_lr)


def dist_info() -> tuple[int, int]:
    """(rank, world_size); initialises gloo when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor, seq_len: int, max_tokens: int | None = 32768, batch_size: int = 16,
             bytes_per_token: float = 1.0) -> dict:
    """Perplexity, bits per byte and next-token accuracy over non-overlapping windows of ``tokens``."""
    was = model.training
    model.eval()
    x, y = eval_windows(tokens, seq_len, max_tokens)
    nll, correct, n = 0.0, 0, 0
    for i in range(0, x.size(0), batch_size):
        logits, _ = model(x[i:i + batch_size])
        yy = y[i:i + batch_size]
        nll += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), yy.reshape(-1),
                                                 reduction="sum").item()
        correct += (logits.argmax(-1) == yy).sum().item()
        n += yy.numel()
    model.train(was)
    loss = nll / n
    return {"loss": loss, "ppl": math.exp(loss), "bpb": loss / math.log(2) / bytes_per_token,
            "acc": correct / n, "tokens": n}


def _batch_generator(seed: int, rank: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + rank * 7919 + step)


def train(config: ModelConfig, args: TrainArgs, teacher: Transformer | None = None, resume: bool = False,
          model: Transformer | None = None, tokenizer=None) -> dict:
    """Train a teacher (``teacher is None``) or distill a student from ``teacher``; returns a summary dict.

    ``model`` may be given to start from specific weights (e.g. a student initialised from the teacher);
    otherwise a fresh model is built (a student from ``teacher``'s weights when ``args.from_teacher``).
    ``tokenizer``: the text's tokenizer; default the teacher's own (``teacher.tokenizer``), else the one
    ``config.tokenizer`` names. It must be the model's and the teacher's (same spec, ids within the vocabulary):
    a mismatch is an error naming both. It is stored in the checkpoint.
    """
    rank, world = dist_info()
    for out in (Path(args.out), trainer_state_path(args.out)):   # before the run, not after it
        if out.exists() and not out.is_file():
            from bitmos.fileio import why_not_a_file
            raise BitmosUserError(f"--out: {out} {why_not_a_file(out)}; give a checkpoint file name to write")
    torch.manual_seed(args.seed)
    tok = tokenizer if tokenizer is not None else getattr(teacher, "tokenizer", None)
    if tok is None:
        tok = get_tokenizer(config.tokenizer, Path(args.out).parent)
    if teacher is not None:
        if (teacher.config.tokenizer, teacher.config.vocab_size) != (config.tokenizer, config.vocab_size):
            raise BitmosUserError(
                f"tokenizer mismatch: the teacher uses tokenizer {teacher.config.tokenizer!r} with a vocabulary of "
                f"{teacher.config.vocab_size}, the student {config.tokenizer!r} with {config.vocab_size}")
        check_tokenizer(teacher.config, tok, "the teacher")
    check_tokenizer(config, tok, "the model to train")
    if args.seq_len > config.max_seq_len:
        raise BitmosUserError(f"seq_len {args.seq_len} > model max_seq_len {config.max_seq_len}")
    train_text, val_text = load_corpus(args.corpus, args.cache_dir)
    train_tok, val_tok = encode_corpus(train_text, tok), encode_corpus(val_text, tok)
    bpt = len(val_text.encode("utf-8")) / max(1, val_tok.numel())

    if model is None:
        model = Transformer(config)
        if teacher is not None and args.from_teacher:
            model.load_from_teacher(teacher)
    model.tokenizer = tok
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    if args.train_only == "scales":
        from bitmos.model.distill import train_only_scales
        train_only_scales(model)
    opt = model.configure_optimizer(args.lr, args.weight_decay)
    step = 0
    state_path = trainer_state_path(args.out)
    if resume:
        if not (Path(args.out).exists() and state_path.exists()):
            raise BitmosUserError(f"cannot resume: {args.out} or {state_path} is missing")
        loaded, meta = load_checkpoint(args.out)
        if loaded.config != model.config:
            raise BitmosUserError(f"cannot resume: {args.out} holds another model config than the one to train")
        model.load_state_dict(loaded.state_dict())
        step = restore_trainer_state(state_path, opt, int(meta["step"]))
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
    model.train()
    hidden = teacher is not None and args.hidden_weight > 0
    record = {k: v for k, v in dataclasses.asdict(args).items() if k != "progress"}
    record["world_size"] = world
    history = []

    def save(final: bool):
        if rank != 0:
            return
        save_checkpoint(args.out, model, record, step, compact=args.compact and final, tokenizer=tok)
        save_trainer_state(state_path, opt, step, torch.get_rng_state())

    bar = tqdm(total=args.steps, initial=step, disable=not args.progress or rank != 0,
               desc="distill" if teacher is not None else "train", dynamic_ncols=True)
    t0 = time.time()
    last = {}
    while step < args.steps:
        lr = lr_at(step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch(train_tok, args.batch_size, args.seq_len, _batch_generator(args.seed, rank, step))
        if teacher is None:
            _, loss = ddp(x, y)
            parts = {"ce": loss.item()}
        else:
            with torch.no_grad():
                t_out = teacher(x, return_hidden=hidden)
            s_out = ddp(x, return_hidden=hidden)
            loss, parts = distill_loss(s_out[0], t_out[0], y, args.gt_weight,
                                       s_out[2] if hidden else None, t_out[2] if hidden else None,
                                       args.hidden_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        last = {"loss": loss.item(), **parts}
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
        if args.eval_interval and step % args.eval_interval == 0 and step < args.steps and rank == 0:
            ev = evaluate(model, val_tok, args.seq_len, args.eval_tokens, bytes_per_token=bpt)
            history.append({"step": step, **last, **{f"val_{k}": v for k, v in ev.items()}})
            bar.write(f"step {step}: train loss {loss.item():.4f}, val ppl {ev['ppl']:.3f}, "
                      f"bpb {ev['bpb']:.4f}, acc {ev['acc']:.4f}")
        if args.ckpt_interval and step % args.ckpt_interval == 0 and step < args.steps:
            save(final=False)
    bar.close()
    elapsed = time.time() - t0
    result = {"step": step, "train": last, "seconds": elapsed, "history": history, "world": world}
    if rank == 0:
        result["val"] = evaluate(model, val_tok, args.seq_len, args.eval_tokens, bytes_per_token=bpt)
        save(final=True)
    if world > 1:
        dist.barrier()
    result["model"] = model
    return result
