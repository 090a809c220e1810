"""`bitmos verify`: the student's binarized linears on the RTL, outputs and cycles against the
simulator (and the simulator against golden)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bitmos.config import AcceleratorConfig

from bitmos.app.demo import DEFAULT_PROMPT


class _Capture:
    """An accelerator side that records each binarized linear's int16 input while computing golden."""

    def __init__(self, golden):
        self.golden = golden
        self.inputs: dict[str, Any] = {}

    def __call__(self, name, x_int16):
        self.inputs[name] = x_int16.clone()
        return self.golden(name, x_int16)


def run_verify(*, checkpoint: str | None = None, config: str = "small", prompt: str = DEFAULT_PROMPT,
               layers: int | None = None, sim: str = "verilator", workdir: str = "bitmos-verify",
               waves: bool = False, progress=print) -> dict[str, Any]:
    """One decode step of the student, every binarized linear on the RTL: outputs and cycles vs the simulator.

    The prompt is prefilled on the host with the integer golden model; the next token's decode step
    then gives each binarized linear its real int16 input. Each linear is compiled for one token, its
    expected result comes from the cycle-accurate simulator (itself checked against golden_linear),
    and all programs run in one cocotb simulation of the emitted Verilog.
    """
    import numpy as np
    import torch

    from bitmos.compiler import compile_linear, read_layer_output, write_layer_input
    from bitmos.model.checkpoint import load_checkpoint, shipped_path
    from bitmos.model.data import ByteTokenizer
    from bitmos.model.export import export_model
    from bitmos.model.golden import AcceleratorSide, HostSide, golden_linear
    from bitmos.model.transformer import KVCache
    from bitmos.rtl.runner import Case, run_cases
    from bitmos.sim import Simulator

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cfg = AcceleratorConfig.load(config)
    path = Path(checkpoint) if checkpoint else shipped_path("student")
    model, _ = load_checkpoint(path)
    export = export_model(model, cfg)
    host = HostSide(export, cfg)
    ids = ByteTokenizer().encode(prompt) if model.config.vocab_size == 256 else [1]
    capture = _Capture(AcceleratorSide(export, cfg))
    cache = KVCache(model.config)
    with torch.no_grad():
        logits, _ = host.transformer(torch.tensor([ids]), linear_override=host.linear_hook(capture.golden),
                                     cache=cache)
        nxt = int(logits[0, -1].argmax())
        host.transformer(torch.tensor([[nxt]]), linear_override=host.linear_hook(capture), cache=cache)
    names = [lin.name for lin in export.linears][: layers or None]
    simulator = Simulator(cfg)
    cases, rows = [], []
    for lin in export.linears:
        if lin.name not in names:
            continue
        x = capture.inputs[lin.name].numpy().astype(np.int16)
        cl = compile_linear(lin, cfg, 1)
        mem = bytearray(cl.memory)
        write_layer_input(mem, cl.manifest, x)
        want = golden_linear(lin, torch.from_numpy(x.astype(np.int64)), cfg).numpy()
        for i, prog in enumerate(cl.programs):
            r = simulator.run(prog.words, mem)
            label = lin.name if len(cl.programs) == 1 else f"{lin.name} part {i}"
            cases.append(Case(label, list(prog.words), bytes(mem), r.cycles, bool(r.error), int(r.cause),
                              bytes(r.memory)))
            mem = r.memory
        sim_ok = np.array_equal(read_layer_output(mem, cl.manifest).astype(np.int64), want.astype(np.int64))
        rows.append({"layer": lin.name, "d_in": lin.d_in, "d_out": lin.d_out, "sim_equals_golden": sim_ok})
    progress(f"{len(cases)} programs ({len(names)} binarized linears of one decode step) on the {sim} model "
             f"of the {cfg.name} RTL; building and simulating ...")
    t_rtl = time.perf_counter()
    report = run_cases(cfg, cases, workdir, sim=sim, waves=waves)
    t_rtl = time.perf_counter() - t_rtl
    by_name = {r["name"]: r for r in report["results"]}
    for row in rows:
        parts = [c for c in cases if c.name == row["layer"] or c.name.startswith(row["layer"] + " part")]
        got = [by_name.get(c.name) for c in parts]
        row["sim_cycles"] = sum(c.cycles for c in parts)
        row["rtl_cycles"] = sum(g["cycles"] for g in got if g) if all(got) else None
        row["rtl_outputs_equal"] = all(g and g["memory_ok"] for g in got)
        row["ok"] = bool(row["sim_equals_golden"] and row["rtl_outputs_equal"]
                         and row["rtl_cycles"] == row["sim_cycles"] and all(g and g["ok"] for g in got))
    return {"checkpoint": str(path), "config": cfg.name, "simulator": sim, "layers": rows,
            "passed": all(r["ok"] for r in rows) and not report["failures"],
            "failures": report["failures"], "rtl_wall_seconds": t_rtl,
            "rtl_cycles_per_second": report["run_cycles"] / max(report["wall_s"], 1e-9),
            "wall_seconds": time.perf_counter() - t0, "workdir": str(workdir)}


def _fmt_verify(rep: dict[str, Any]) -> str:
    lines = [f"{'layer':28s} {'shape':>11s} {'sim cycles':>11s} {'RTL cycles':>11s}  outputs"]
    for r in rep["layers"]:
        outs = "bit-exact" if r["rtl_outputs_equal"] and r["sim_equals_golden"] else "MISMATCH"
        rtl = "-" if r["rtl_cycles"] is None else f"{r['rtl_cycles']:,}"
        lines.append(f"{r['layer']:28s} {r['d_in']:>5d}x{r['d_out']:<5d} {r['sim_cycles']:>11,} {rtl:>11s}  "
                     f"{outs}{'' if r['ok'] else '  FAIL'}")
    for f in rep["failures"][:10]:
        lines.append(f"  {f}")
    n_ok = sum(r["ok"] for r in rep["layers"])
    lines.append(f"\n{'PASS' if rep['passed'] else 'FAIL'}: {n_ok}/{len(rep['layers'])} binarized linears: RTL "
                 f"outputs == simulator == golden bit for bit, RTL cycles == simulator cycles "
                 f"({rep['simulator']}, config {rep['config']}, {rep['rtl_cycles_per_second']:,.0f} cycles/s, "
                 f"{rep['wall_seconds']:.0f} s)")
    return "\n".join(lines) + "\n"


def cmd_verify(args) -> int:
    import sys
    rep = run_verify(checkpoint=args.checkpoint, config=args.config, prompt=args.prompt, layers=args.layers,
                     sim=args.sim, workdir=args.workdir, waves=args.waves,
                     progress=(lambda *a: print(*a, file=sys.stderr)) if args.json else print)
    print(json.dumps(rep, indent=2) if args.json else _fmt_verify(rep), end="" if not args.json else "\n")
    return 0 if rep["passed"] else 1


def add_commands(sub) -> None:
    p = sub.add_parser("verify", help="run one decode step of the student on the RTL (cocotb + Verilator); "
                       "check outputs bit for bit and cycles against the simulator")
    p.add_argument("--checkpoint", help="student checkpoint (default: the shipped BinaryMoS student)")
    p.add_argument("--config", default="small", help="accelerator config file or preset (default small)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt whose next decode step is verified")
    p.add_argument("--layers", type=int, help="verify only the first N binarized linears (default: all)")
    p.add_argument("--sim", default="verilator", choices=["verilator", "icarus"], help="HDL simulator")
    p.add_argument("--workdir", default="bitmos-verify", help="folder for the bench's job, report and logs")
    p.add_argument("--waves", action="store_true", help="dump waveforms (FST on Verilator, VCD on Icarus)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_verify)
