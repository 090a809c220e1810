"""What the model-side benchmarks share: the student/text options and their loading (one place for both)."""

from __future__ import annotations

import argparse


def add_student_arguments(ap: argparse.ArgumentParser, *, tokens: int, calibrate: int, tokens_help: str) -> None:
    """--model/--scheme/--config/--corpus/--tokens/--calibrate/--threads/--json."""
    ap.add_argument("--model", default=None, help="checkpoint, HF folder, .gguf or smollm2 (default: the shipped "
                                                  "BinaryMoS student)")
    ap.add_argument("--scheme", default=None, help="binarize a float --model with this scheme's init (no training)")
    ap.add_argument("--config", default="small", help="accelerator config (its act_bits must match the student's)")
    ap.add_argument("--corpus", default="builtin", help="text: builtin (default), kjv, files:PATH, ...")
    ap.add_argument("--tokens", type=int, default=tokens, help=tokens_help)
    ap.add_argument("--calibrate", type=int, default=calibrate, help="calibration tokens (training split)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")


def load_student_and_text(args):
    """(accelerator config, the student in eval mode, ``args.tokens`` validation tokens of ``args.corpus``);
    a float ``--model`` is binarized with ``--scheme`` at the config's activation bits. Raises BitmosUserError."""
    import torch

    from bitmos.model.checkpoint import shipped_path
    from bitmos.model.data import encode_corpus, load_corpus
    from bitmos.model.export import resolve_accel
    from bitmos.model.hf import load_model_source

    torch.set_num_threads(args.threads)
    cfg = resolve_accel(args.config)
    model, _ = load_model_source(args.model or shipped_path("student"), scheme=args.scheme, act_bits=cfg.act_bits)
    model.eval()
    val = encode_corpus(load_corpus(args.corpus)[1][: 64 * args.tokens], model.tokenizer)[: args.tokens]
    return cfg, model, val
