"""Commands that join the pipeline: ``estimate`` (compiler + simulator on model shapes), ``demo``
(model -> golden model -> compiler -> simulator, generating text) and ``verify`` (simulator vs RTL).

This is the one module allowed to import every area; each area stays independent of the others.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bitmos.config import AcceleratorConfig
from bitmos.errors import BitmosUserError, ConfigError

def load_shape(model: str) -> dict[str, Any]:
    """A shape name from :data:`bitmos.compiler.MODEL_SHAPES`, a Hugging Face ``config.json`` or a bitmos
    model config JSON."""
    from bitmos.compiler import MODEL_SHAPES

    if model in MODEL_SHAPES:
        return dict(MODEL_SHAPES[model])
    p = Path(model)
    if not p.is_file():
        raise ConfigError(f"model {model!r} is neither a file nor a built-in shape "
                          f"({', '.join(MODEL_SHAPES)})")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not a readable JSON model config ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a JSON object")
    return data.get("model_config", data) if "dim" not in data and "hidden_size" not in data else data


# ---- estimate ------------------------------------------------------------------------------------

def estimate(shape: dict[str, Any], cfg: AcceleratorConfig, *, prefill: int, decode: int,
             energy_table: str | None = None) -> dict[str, Any]:
    """Whole-model prefill and decode figures in timing-only mode.

    Every binarized linear is compiled and simulated; layers of the same shape compile to programs
    that differ only in external addresses, which do not affect timing or action counts, so each
    distinct (d_in, d_out) is compiled and simulated once and counted once per occurrence. Decode
    runs every linear on one token (a KV-cached step), so M decode tokens cost M identical steps.
    Host-side operations (attention, norms, embeddings, LM head) are not on the accelerator and are
    not counted.
    """
    from bitmos.compiler import llama_linears
    from bitmos.explore.perf import simulate_linears
    from bitmos.sim.energy import EnergyTable
    from bitmos.sim.report import summarize

    if prefill < 0 or decode < 0 or prefill + decode == 0:
        raise ConfigError(f"--prefill ({prefill}) and --decode ({decode}) must be >= 0 and not both 0")
    table = EnergyTable.load(energy_table) if energy_table else EnergyTable.load(_default_table(cfg))
    walk = llama_linears(shape)
    out: dict[str, Any] = {"model": {"layers": len(walk), "binary_weights": sum(a * b for _, a, b in walk)},
                           "config": cfg.to_dict()}
    t0 = time.perf_counter()
    for phase, tokens in (("prefill", prefill), ("decode", 1 if decode else 0)):
        if not tokens:
            continue
        runs, names = [], []
        for (name, _, _), layer_runs in zip(walk, simulate_linears(cfg, walk, tokens)):
            runs += layer_runs
            names += [name] * len(layer_runs)
        steps = decode if phase == "decode" else 1
        s = summarize(runs * steps, table, tokens=tokens * steps)
        s.pop("per_run", None)
        s["per_layer"] = [{"name": n, "cycles": r.cycles, "stall_cycles": r.stall_cycles}
                          for n, r in zip(names, runs)]
        out[phase] = s
    weight_bytes = out["model"]["binary_weights"] / 8
    f = cfg.clock_mhz * 1e6
    out["decode_bound_tokens_per_s"] = (cfg.ext_bw_bits / 8 * f) / weight_bytes
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def _default_table(cfg: AcceleratorConfig) -> str:
    return "horowitz45_hbm2" if cfg.ext_bw_bits >= 512 else "horowitz45_ddr3"


def _fmt_estimate(est: dict[str, Any]) -> str:
    from bitmos.sim.report import format_text

    lines = [f"model: {est['model']['layers']} binarized linears, "
             f"{est['model']['binary_weights'] / 1e9:.2f} G binary weights "
             f"({est['model']['binary_weights'] / 8 / 2**20:.0f} MiB at 1 bit)"]
    for phase in ("prefill", "decode"):
        if phase in est:
            lines.append(f"\n== {phase} ({est[phase]['tokens']} tokens)")
            lines.append(format_text(est[phase]).rstrip())
    lines.append(f"\nmemory-bound decode limit: {est['decode_bound_tokens_per_s']:.1f} tokens/s "
                 "(bandwidth / weight bytes per token)")
    lines.append(f"(estimated in {est['wall_seconds']:.2f} s, timing-only simulation)")
    return "\n".join(lines) + "\n"


def cmd_estimate(args) -> int:
    cfg = AcceleratorConfig.load(args.config)
    est = estimate(load_shape(args.model), cfg, prefill=args.prefill, decode=args.decode,
                   energy_table=args.energy_table)
    if args.plots:
        from bitmos.fileio import write_json_atomic
        from bitmos.sim.report import write_plots
        out = Path(args.plots)
        for phase in ("prefill", "decode"):
            if phase in est:
                (out / phase).mkdir(parents=True, exist_ok=True)
                write_plots(est[phase], out / phase)
        write_json_atomic(out / "estimate.json", est)
    if args.json:
        print(json.dumps(est, indent=2))
    else:
        print(_fmt_estimate(est), end="")
    return 0


def _add_estimate(sub) -> None:
    from bitmos.compiler import MODEL_SHAPES

    p = sub.add_parser("estimate", help="whole-model prefill/decode throughput and energy of a model shape "
                       "(e.g. LLaMA-2-7B) on a config, in timing-only simulation")
    p.add_argument("--model", default="llama-2-7b",
                   help=f"Hugging Face config.json, bitmos model config JSON, or one of {', '.join(MODEL_SHAPES)}")
    p.add_argument("--config", default="asic32", help="accelerator config file or preset (default asic32)")
    p.add_argument("--prefill", type=int, default=2048, help="prompt tokens (default 2048)")
    p.add_argument("--decode", type=int, default=128, help="generated tokens (default 128)")
    p.add_argument("--energy-table", help="energy table name or TOML file (default by memory bandwidth)")
    p.add_argument("--plots", metavar="DIR", help="write estimate.json and roofline/energy plots per phase")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_estimate)


# ---- demo ----------------------------------------------------------------------------------------

DEFAULT_PROMPT = "The argument "


class SimulatedAccelerator:
    """Runs every binarized linear on the cycle-accurate simulator and checks it against the golden model.

    Per call: the host's int16 input goes into the layer's input region of its memory image, the
    layer's compiled program(s) run in functional mode, and the int32 output region is read back.
    Programs are compiled once per (layer, token count). Every output is compared bit for bit with
    ``golden_linear`` on the same input; mismatches are counted, never tolerated silently.
    """

    def __init__(self, export, cfg: AcceleratorConfig):
        from bitmos.sim import Simulator
        self.cfg = cfg
        self.layers = {lin.name: lin for lin in export.linears}
        self.sim = Simulator(cfg)
        self._compiled: dict[tuple[str, int], Any] = {}
        self.runs: list[tuple[str, int, Any]] = []      # (layer, tokens, RunResult)
        self.mismatches: list[str] = []
        self.compile_seconds = 0.0
        self.sim_seconds = 0.0
        self.trace = False          # keep per-instruction timelines (for the timeline plots)

    def compiled(self, name: str, tokens: int):
        from bitmos.compiler import compile_linear
        key = (name, tokens)
        if key not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[key] = compile_linear(self.layers[name], self.cfg, tokens)
            self.compile_seconds += time.perf_counter() - t0
        return self._compiled[key]

    def __call__(self, name: str, x_int16):
        import numpy as np
        import torch

        from bitmos.compiler import read_layer_output, write_layer_input
        from bitmos.model.golden import golden_linear

        x = x_int16.detach().cpu().numpy().astype(np.int16)
        cl = self.compiled(name, x.shape[0])
        mem = bytearray(cl.memory)
        write_layer_input(mem, cl.manifest, x)
        t0 = time.perf_counter()
        for prog in cl.programs:
            r = self.sim.run(prog.words, mem, trace=self.trace)
            if r.error:
                raise BitmosUserError(f"{name}: the simulated accelerator faulted: {r.error_message}")
            mem = r.memory
            self.runs.append((name, x.shape[0], r))
        self.sim_seconds += time.perf_counter() - t0
        y = read_layer_output(mem, cl.manifest)
        want = golden_linear(self.layers[name], torch.from_numpy(x.astype(np.int64)), self.cfg).numpy()
        if not np.array_equal(y.astype(np.int64), want.astype(np.int64)):
            bad = int((y.astype(np.int64) != want.astype(np.int64)).sum())
            self.mismatches.append(f"{name} (T={x.shape[0]}): {bad} of {y.size} outputs differ from golden")
        return torch.from_numpy(y.astype(np.int64))


def _generate(transformer, hook, prompt_ids: list[int], n_new: int, *, on_phase=None) -> list[int]:
    """Greedy generation with a KV cache: one prefill over the prompt, then one-token decode steps."""
    import torch

    from bitmos.model.transformer import KVCache

    cache = KVCache(transformer.config)
    idx = torch.tensor([prompt_ids], dtype=torch.long)
    out = list(prompt_ids)
    with torch.no_grad():
        if on_phase:
            on_phase("prefill")
        logits, _ = transformer(idx, linear_override=hook, cache=cache)
        for step in range(n_new):
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            if step == n_new - 1 or cache.length >= transformer.config.max_seq_len:
                break
            if on_phase:
                on_phase("decode")
            logits, _ = transformer(torch.tensor([[nxt]]), linear_override=hook, cache=cache)
    return out


def run_demo(*, checkpoint: str | None = None, config: str = "small", prompt: str = DEFAULT_PROMPT,
             tokens: int = 24, out_dir: str | None = "bitmos-demo", energy_table: str | None = None,
             progress=print) -> dict[str, Any]:
    """Generate text with every binarized linear on the simulated accelerator; check it against golden."""
    import torch

    from bitmos.model.checkpoint import load_checkpoint, shipped_path
    from bitmos.model.data import ByteTokenizer
    from bitmos.model.export import export_model
    from bitmos.model.golden import AcceleratorSide, HostSide
    from bitmos.sim.energy import EnergyTable
    from bitmos.sim.report import summarize

    t_start = time.perf_counter()
    # The shipped model is tiny: one thread is fastest, and avoids oversubscribing a busy machine.
    torch.set_num_threads(1)
    cfg = AcceleratorConfig.load(config)
    path = Path(checkpoint) if checkpoint else shipped_path("student")
    model, meta = load_checkpoint(path)
    if model.config.vocab_size != 256:
        raise BitmosUserError(f"{path}: the demo uses the byte tokenizer (vocab 256); this model has "
                              f"vocab {model.config.vocab_size}")
    if tokens < 1:
        raise BitmosUserError(f"--tokens must be at least 1, got {tokens}")
    tok = ByteTokenizer()
    ids = tok.encode(prompt)
    if not ids:
        raise BitmosUserError("the prompt is empty")
    if len(ids) + tokens > model.config.max_seq_len:
        raise BitmosUserError(f"prompt ({len(ids)} tokens) + {tokens} new tokens exceeds the model's context "
                              f"of {model.config.max_seq_len}")
    export = export_model(model, cfg, info={"source": str(path)})
    host = HostSide(export, cfg)
    progress(f"model {path.name}: {len(export.linears)} binarized linears; accelerator {cfg.name} "
             f"({cfg.rows}x{cfg.cols} PEs x {cfg.lanes} lanes, A{cfg.act_bits}, {cfg.experts} experts)")

    # 1. the integer golden model, on the host
    golden = AcceleratorSide(export, cfg)
    golden_ids = _generate(host.transformer, host.linear_hook(golden), ids, tokens)
    # 2. the same generation with every binarized linear on the simulated accelerator
    accel = SimulatedAccelerator(export, cfg)
    phase = {"name": "prefill", "marks": []}

    def on_phase(name):
        phase["marks"].append((name, len(accel.runs)))
        # trace the prefill and the first decode step: the timeline plots show one of each
        accel.trace = len(phase["marks"]) <= 2
    sim_ids = _generate(host.transformer, host.linear_hook(accel), ids, tokens, on_phase=on_phase)
    # 3. the float student for reference
    with torch.no_grad():
        float_ids = model.generate(torch.tensor([ids]), len(golden_ids) - len(ids), temperature=0)[0].tolist()

    marks = phase["marks"] + [("end", len(accel.runs))]
    prefill_runs = [r for _, _, r in accel.runs[marks[0][1]:marks[1][1]]]
    decode_runs = [r for _, _, r in accel.runs[marks[1][1]:]] if len(marks) > 2 else []
    table = EnergyTable.load(energy_table or _default_table(cfg))
    report: dict[str, Any] = {
        "checkpoint": str(path), "config": cfg.to_dict(), "prompt": prompt,
        "text": tok.decode(sim_ids[len(ids):]), "golden_text": tok.decode(golden_ids[len(ids):]),
        "float_text": tok.decode(float_ids[len(ids):]),
        "matches_golden": sim_ids == golden_ids and not accel.mismatches,
        "layer_mismatches": accel.mismatches,
        "float_agreement": sum(a == b for a, b in zip(sim_ids[len(ids):], float_ids[len(ids):]))
        / max(1, len(sim_ids) - len(ids)),
        "prompt_tokens": len(ids), "new_tokens": len(sim_ids) - len(ids),
        "layer_runs": len(accel.runs),
        "prefill": summarize(prefill_runs, table, tokens=len(ids)),
    }
    report["prefill"].pop("per_run", None)
    if decode_runs:
        report["decode"] = summarize(decode_runs, table, tokens=len(decode_runs) // max(1, len(export.linears)))
        report["decode"].pop("per_run", None)
    report["wall_seconds"] = {"total": time.perf_counter() - t_start, "compile": accel.compile_seconds,
                              "simulate": accel.sim_seconds}
    if out_dir:
        from bitmos.fileio import write_json_atomic, write_text_atomic
        from bitmos.sim.report import write_plots
        out = Path(out_dir)
        for name in ("prefill", "decode"):
            if name in report:
                (out / name).mkdir(parents=True, exist_ok=True)
                runs = prefill_runs if name == "prefill" else decode_runs[:len(export.linears)]
                trace_runs = [r for r in runs if r.trace is not None]
                report[name]["plots"] = [str(p) for p in write_plots(report[name], out / name,
                                                                      trace_runs=trace_runs)]
        write_json_atomic(out / "report.json", report)
        write_text_atomic(out / "generated.txt", prompt + report["text"])
        report["out_dir"] = str(out)
    return report


def _fmt_demo(rep: dict[str, Any]) -> str:
    from bitmos.sim.report import format_text
    ok = "MATCHES" if rep["matches_golden"] else "DOES NOT MATCH"
    lines = [f"prompt: {rep['prompt']!r}",
             f"generated on the simulated accelerator ({rep['new_tokens']} tokens):",
             "    " + repr(rep["text"]),
             f"integer golden model: {ok} (every binarized linear compared bit for bit; "
             f"{rep['layer_runs']} layer runs)",
             f"float student agrees on {rep['float_agreement'] * 100:.0f} % of the generated tokens"]
    for m in rep["layer_mismatches"][:10]:
        lines.append(f"  mismatch: {m}")
    for name in ("prefill", "decode"):
        if name in rep:
            lines.append(f"\n== {name} ({rep[name]['tokens']} tokens, binarized linears only)")
            lines.append(format_text(rep[name]).rstrip())
    w = rep["wall_seconds"]
    lines.append(f"\nwall time {w['total']:.1f} s (compile {w['compile']:.1f} s, simulate {w['simulate']:.1f} s)")
    if rep.get("out_dir"):
        lines.append(f"report, text and plots in {rep['out_dir']}/")
    return "\n".join(lines) + "\n"


def cmd_demo(args) -> int:
    import sys
    quiet = args.json
    rep = run_demo(checkpoint=args.checkpoint, config=args.config, prompt=args.prompt, tokens=args.tokens,
                   out_dir=args.out, energy_table=args.energy_table,
                   progress=(lambda *a: print(*a, file=sys.stderr)) if quiet else print)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print(_fmt_demo(rep), end="")
    return 0 if rep["matches_golden"] else 1


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="generate text with the shipped 1-bit student on the simulated accelerator, "
                       "checked against the integer golden model; throughput and energy report")
    p.add_argument("--checkpoint", help="student checkpoint (default: the shipped BinaryMoS student)")
    p.add_argument("--config", default="small", help="accelerator config file or preset (default small)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt text")
    p.add_argument("--tokens", type=int, default=24, help="tokens to generate (default 24)")
    p.add_argument("--out", default="bitmos-demo", help="folder for report.json, generated.txt and plots")
    p.add_argument("--energy-table", help="energy table name or TOML file")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(func=cmd_demo)


def add_commands(sub) -> None:
    """The pipeline's commands, in help order."""
    _add_demo(sub)
    _add_verify(sub)
    _add_estimate(sub)


# ---- verify ----------------------------------------------------------------------------------------

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


def _add_verify(sub) -> None:
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
