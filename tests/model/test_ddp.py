"""DistributedDataParallel on 2 CPU processes (gloo), launched by torchrun exactly as a user would."""

import os
import subprocess
import sys


from bitmos.model.checkpoint import load_checkpoint


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_process_gloo_training(tmp_path, text_corpus):
    out = tmp_path / "ddp.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "bitmos.model", "train", "--out", str(out),
           "--dim", "32", "--n-layers", "1", "--n-heads", "2", "--hidden-dim", "64", "--max-seq-len", "32",
           "--scheme", "mos", "--experts", "2", "--steps", "4", "--batch-size", "4", "--seq-len", "16",
           "--eval-interval", "0", "--eval-tokens", "512", "--corpus", text_corpus, "--no-progress",
           "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "world 2" in r.stdout, r.stdout
    model, meta = load_checkpoint(out)
    assert meta["step"] == 4 and meta["train_args"]["world_size"] == 2
