"""bitmos beside published whole-model 1-bit / ternary LLM accelerators (issue 18's comparison), in one run.

For each published chip, its figures as its authors state them, and the estimator's figures
(``bitmos.explore.perf.estimate`` + ``decode_at_context``, the same as ``bitmos estimate --context``) for a config
of the same external bandwidth and clock running a model of the same size, with the ratios and what the difference
comes from. A chip whose model shape or memory bandwidth its abstract does not give is listed with what is
missing, not compared against a guess.

* Slim-Llama (Kim et al., ISSCC 2025, 28 nm; KAIST's project page and the ISSCC abstract): 1/1.58-bit weights,
  models up to 3B parameters, 489 ms per token on its 3B model, 1.6 GB/s of external bandwidth at 200 MHz,
  82.07 mW at 200 MHz (so 40.1 mJ per token of chip energy; its DRAM's energy is not in that figure).
  Compared: BitNet b1.58 3B's shape (``bitnet-b1.58-3b``, the 3B ternary LLaMA) with ternary weights, on
  ``medium``'s array with 8-bit activations, one scale set, the vector unit, 64 bits per cycle at 200 MHz
  (1.6 GB/s), buffers grown until every layer fits; decode at a 128-token context.
* TerEffic (Yin et al., arXiv 2502.16473): 727 tokens/s on a 2.7B ternary model with HBM at 46 W; the HBM
  bandwidth, the model's shape and the batch are not in the abstract.
* TeLLMe v1/v2 (Qiao et al., arXiv 2504.16266, 2510.15926): an AMD KV260, 9 / 25 tokens/s; the model's size
  is not in the abstracts.

Exit code 0 whatever the ratios: a measurement, not a test.

    python benchmarks/bench_published.py
    python benchmarks/bench_published.py --json published.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:   # run from a fresh clone without installing
    sys.path.insert(0, str(ROOT))

#: Slim-Llama as published (ISSCC 2025): seconds per token on its 3B model, bytes/s external, clock, chip watts.
SLIM_LLAMA = {"name": "Slim-Llama (ISSCC 2025, 28 nm)", "model": "3B, 1/1.58-bit weights", "s_per_token": 0.489,
              "ext_bytes_per_s": 1.6e9, "clock_mhz": 200.0, "chip_w": 82.07e-3}
NOT_COMPARED = [
    ("TerEffic (arXiv 2502.16473, HBM design)", "727 tokens/s, 2.7B ternary, 46 W (63 mJ/token, board)",
     "HBM bandwidth, model shape and batch not in the abstract"),
    ("TeLLMe v1 / v2 (arXiv 2504.16266, 2510.15926)", "9 / 25 tokens/s on a KV260, 7 / 5 W",
     "model size not in the abstracts"),
]


def slim_class_config():
    """``medium``'s array at Slim-Llama's external bandwidth and clock: 64 bits a cycle at 200 MHz = 1.6 GB/s."""
    from bitmos.config import preset_config
    bits = int(SLIM_LLAMA["ext_bytes_per_s"] * 8 / (SLIM_LLAMA["clock_mhz"] * 1e6))
    return dataclasses.replace(preset_config("medium"), name="slim-class", act_bits=8, experts=1, ext_bw_bits=bits,
                               clock_mhz=SLIM_LLAMA["clock_mhz"], ext_mem_mib=2048, vector_unit=1)


def measure_slim(context: int = 128) -> dict:
    from bitmos.explore.perf import decode_at_context, estimate

    shape = "bitnet-b1.58-3b"
    est = estimate(shape, slim_class_config(), prefill=0, decode=1, scheme="ternary", auto_buffers=True)
    at = decode_at_context(est, shape, context)
    br = est["decode"]["energy_breakdown_pj"]
    tokens = est["decode"]["tokens"]
    chip_j = (sum(br.values()) - br["dram"]) * 1e-12 / tokens        # the linears' and vector unit's, no DRAM
    pub_tps = 1 / SLIM_LLAMA["s_per_token"]
    return {"published": dict(SLIM_LLAMA, tokens_per_s=pub_tps, chip_mj_per_token=SLIM_LLAMA["chip_w"]
                              * SLIM_LLAMA["s_per_token"] * 1e3),
            "bitmos": {"config": est["config"], "grown": est["grown"], "model": shape, "context": context,
                       "binary_weights": est["model"]["binary_weights"], "weight_bits": est["model"]["weight_bits"],
                       "tokens_per_s": at["tokens_per_s"], "bound_tokens_per_s": at["bound_tokens_per_s"],
                       "mj_per_token": at["energy_per_token_j"] * 1e3, "chip_mj_per_token": chip_j * 1e3,
                       "dram_mj_per_token": br["dram"] * 1e-9 / tokens, "host_ops": est["host_ops"],
                       "weights_only_bound_tokens_per_s": est["decode_bound_tokens_per_s"]}}


def render(r: dict) -> str:
    p, b = r["published"], r["bitmos"]
    gbytes = b["weight_bits"] / 8 / 1e9
    lines = ["| chip | model | ext. bandwidth, clock | tokens/s | mJ/token (chip) | mJ/token (with DRAM) |",
             "|---|---|---|---|---|---|",
             f"| {p['name']} (published) | {p['model']} | {p['ext_bytes_per_s'] / 1e9:.1f} GB/s, "
             f"{p['clock_mhz']:.0f} MHz | {p['tokens_per_s']:.2f} | {p['chip_mj_per_token']:.1f} | not given |",
             f"| bitmos estimate, {b['config']['name']} (medium's 8x8x64 array, A8, vector unit; grown: "
             f"{', '.join(f'{k} {v}' for k, v in b['grown'].items()) or 'none'}) | BitNet b1.58 3B shape, "
             f"{b['binary_weights'] / 1e9:.2f} G ternary weights as two planes ({gbytes:.3f} GB a token), context "
             f"{b['context']} | {b['config']['ext_bw_bits'] * b['config']['clock_mhz'] / 8e3:.1f} GB/s, "
             f"{b['config']['clock_mhz']:.0f} MHz | {b['tokens_per_s']:.2f} (bound {b['bound_tokens_per_s']:.2f}) | "
             f"{b['chip_mj_per_token']:.1f} (45 nm table) | {b['mj_per_token']:.1f} |"]
    for name, pub, why in NOT_COMPARED:
        lines.append(f"| {name} (published) | {pub} | — | — | — | not compared: {why} |")
    ratio = b["tokens_per_s"] / p["tokens_per_s"]
    lines += ["",
              f"bitmos / Slim-Llama decode: {ratio:.2f}x. At {p['ext_bytes_per_s'] / 1e9:.1f} GB/s the two weight "
              f"planes of the 3B shape alone bound decode at {b['weights_only_bound_tokens_per_s']:.2f} tokens/s; "
              f"Slim-Llama's {p['tokens_per_s']:.2f} is above that, so it reads fewer than 2 bits per weight "
              f"(a 1.58-bit packing reads {b['weights_only_bound_tokens_per_s'] * 2 / 1.58:.2f} at most) or runs "
              "a smaller 3B-class model. Its 40 mJ is a 28 nm chip's whole power; bitmos' chip energy is its 45 nm "
              "table's per-action energies without DRAM (DRAM dominates bitmos' total)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", type=int, default=128, help="decode context of the bitmos estimate (default 128)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    r = measure_slim(args.context)
    print(render(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
