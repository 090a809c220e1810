"""FPGA synthesis: Verilog -> Yosys (synth_ecp5 / synth_ice40) -> nextpnr, parsed into a SynthResult.

Tools are the system binaries when they are on PATH (``yosys``, ``nextpnr-ecp5``, ``nextpnr-ice40``),
else the ``yowasp-*`` packages (``pip install bitmos[fpga]``). Results are cached under
``~/.cache/bitmos/synth`` (or ``cache_dir``) keyed by a hash of the Verilog, the top module, the
target, device, package, flow options and the tool versions, so a second run of the same design is free.

ECP5 runs are out of context by default (``nextpnr-ecp5 --out-of-context``: no IO buffers, so a
component with hundreds of port bits can be measured on its own); ``io=True`` places real IOs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from bitmos.config import AcceleratorConfig
from bitmos.errors import BitmosUserError
from bitmos.fileio import write_json_atomic

#: Bumped when the flow (scripts, options, parsing) changes in a way that changes results.
FLOW_VERSION = 3   # 2: the critical path is parsed from the report; 3: -dsp on the iCE40 UP5K

#: target -> device name -> (nextpnr device flag, default package, part name)
DEVICES: dict[str, dict[str, tuple[str, str, str]]] = {
    "ecp5": {
        "12k": ("--12k", "CABGA381", "LFE5U-12F"),
        "25k": ("--25k", "CABGA381", "LFE5U-25F"),
        "45k": ("--45k", "CABGA381", "LFE5U-45F"),
        "85k": ("--85k", "CABGA381", "LFE5U-85F"),
    },
    "ice40": {
        "hx1k": ("--hx1k", "tq144", "iCE40HX1K"),
        "hx8k": ("--hx8k", "ct256", "iCE40HX8K"),
        "lp8k": ("--lp8k", "cm81", "iCE40LP8K"),
        "up5k": ("--up5k", "sg48", "iCE40UP5K"),
    },
}
DEFAULT_DEVICE = {"ecp5": "85k", "ice40": "hx8k"}

#: The report's cell names for each resource class.
RESOURCE_CELLS = {
    "ecp5": {"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "bram": "DP16KD", "dsp": "MULT18X18D",
             "io": "TRELLIS_IO"},
    "ice40": {"lut": "ICESTORM_LC", "ff": None, "bram": "ICESTORM_RAM", "dsp": "ICESTORM_DSP",
              "io": "SB_IO"},
}

DEFAULT_TIMEOUT_S = 1800.0


class SynthError(BitmosUserError):
    """Synthesis or place-and-route failed (design does not fit, tool missing, timeout, tool error)."""


class DoesNotFit(SynthError):
    """The design needs more of a resource than the device has."""

    def __init__(self, message: str, resource: str | None = None, used: int | None = None,
                 available: int | None = None):
        super().__init__(message)
        self.resource, self.used, self.available = resource, used, available


@dataclass
class SynthResult:
    target: str
    device: str
    part: str
    package: str
    top: str
    luts: int
    ffs: int | None
    brams: int
    dsps: int
    fmax_mhz: float | None
    lut_available: int
    utilization: dict[str, dict[str, int]] = field(default_factory=dict)
    binary_ops_per_cycle: int | None = None   # 2*R*C*L of the synthesized array (None: not an array)
    config: dict[str, Any] | None = None
    config_name: str | None = None
    component: str | None = None             # pe / array / accelerator (None: a Verilog file)
    tools: dict[str, str] = field(default_factory=dict)
    verilog_sha256: str = ""
    key: str = ""
    seconds: float = 0.0
    cached: bool = False
    out_of_context: bool = True
    pnr: bool = True                          # False: Yosys netlist counts only (no placement, no fmax)
    critical_path: dict[str, Any] | None = None   # see critical_path(): the slowest path nextpnr reports
    meta_bits: int | None = None              # the META record width of the synthesized contract (it grew with BIAS)
    commands: list[str] = field(default_factory=list)

    @property
    def binary_ops_per_lut_cycle(self) -> float | None:
        if not self.binary_ops_per_cycle or not self.luts:
            return None
        return self.binary_ops_per_cycle / self.luts

    @property
    def luts_per_binary_op(self) -> float | None:
        v = self.binary_ops_per_lut_cycle
        return 1.0 / v if v else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["binary_ops_per_lut_cycle"] = self.binary_ops_per_lut_cycle
        d["luts_per_binary_op"] = self.luts_per_binary_op
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SynthResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def summary(self) -> str:
        fmax = f"{self.fmax_mhz:.1f} MHz" if self.fmax_mhz else "n/a"
        s = (f"{self.config_name or '?'} {self.component or self.top} on {self.part}: LUT {self.luts}/{self.lut_available} "
             f"({100.0 * self.luts / max(self.lut_available, 1):.1f} %), FF {self.ffs}, BRAM {self.brams}, "
             f"DSP {self.dsps}, fmax {fmax}")
        if self.binary_ops_per_lut_cycle:
            s += (f", {self.binary_ops_per_cycle} binary ops/cycle = {self.binary_ops_per_lut_cycle:.3f} "
                  f"ops/LUT/cycle ({self.luts_per_binary_op:.2f} LUT/op)")
        if self.critical_path:
            cp = self.critical_path
            s += (f"; critical path {cp['delay_ns']:.1f} ns, {cp['from']} -> {cp['to']} "
                  f"through {', '.join(cp['through'])}")
        if self.cached:
            s += " [cached]"
        return s


# ---- tools ------------------------------------------------------------------------------------------

def find_tool(name: str) -> list[str]:
    """Command prefix for ``yosys`` / ``nextpnr-ecp5`` / ``nextpnr-ice40``: system binary, else yowasp."""
    override = os.environ.get(f"BITMOS_{name.upper().replace('-', '_')}")
    if override:
        return override.split()
    path = shutil.which(name)
    if path:
        return [path]
    ywname = f"yowasp-{name}"
    here = Path(sys.executable).parent / ywname
    if here.exists():
        return [str(here)]
    path = shutil.which(ywname)
    if path:
        return [path]
    raise SynthError(f"{name} not found: install the system package or `pip install yowasp-{name}` "
                     "(the `fpga` extra: pip install -e '.[fpga]')")


@lru_cache(maxsize=None)
def tool_version(name: str) -> str:
    cmd = find_tool(name)
    flag = "-V" if name == "yosys" else "--version"
    try:
        p = subprocess.run(cmd + [flag], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise SynthError(f"{name} {flag} timed out") from None
    out = (p.stdout + p.stderr).strip().splitlines()
    return out[-1].strip() if out else "unknown"


def _run(cmd: list[str], *, cwd: Path, timeout: float, log: Path, what: str) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        # what the tool printed before it was stopped (nextpnr reports its progress on stderr)
        def text(out):
            return out.decode(errors="replace") if isinstance(out, bytes) else (out or "")
        log.write_text(text(exc.stdout) + "\n--- stderr ---\n" + text(exc.stderr))
        raise SynthError(f"{what} timed out after {timeout:.0f} s (raise --timeout); log: {log}") from None
    log.write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    p.elapsed = time.monotonic() - t0  # type: ignore[attr-defined]
    return p


# ---- parsing ----------------------------------------------------------------------------------------

def parse_report(report: dict[str, Any], target: str) -> dict[str, Any]:
    """LUT/FF/BRAM/DSP counts and fmax from a nextpnr ``--report`` JSON."""
    if target not in RESOURCE_CELLS:
        raise SynthError(f"unknown target {target!r}; targets: {', '.join(RESOURCE_CELLS)}")
    util = report.get("utilization", {})
    cells = RESOURCE_CELLS[target]

    def used(kind: str) -> int | None:
        name = cells[kind]
        if name is None:
            return None
        return int(util.get(name, {}).get("used", 0))

    fmaxes = [v.get("achieved") for v in report.get("fmax", {}).values() if v.get("achieved")]
    lut_name = cells["lut"]
    return {
        "luts": used("lut") or 0,
        "ffs": used("ff"),
        "brams": used("bram") or 0,
        "dsps": used("dsp") or 0,
        "fmax_mhz": float(min(fmaxes)) if fmaxes else None,
        "lut_available": int(util.get(lut_name, {}).get("available", 0)),
        "utilization": {k: {"used": int(v["used"]), "available": int(v["available"])}
                        for k, v in util.items() if v.get("used")},
        "critical_path": critical_path(report),
    }


def _cell_module(cell: str) -> str:
    """The RTL block of a flattened cell name: ``scale_unit.sequencer.rline_TRELLIS_FF_Q`` ->
    ``scale_unit.sequencer``, ``buffers.imem.0.0`` -> ``buffers.imem``; top-level cells -> ``top``."""
    parts = [p for p in cell.split(".")[:-1] if not p.isdigit()]
    return ".".join(parts) or "top"


def _cell_signal(cell: str) -> str:
    """A readable name for a path's end: the cell name up to the primitive Yosys appended."""
    for marker in ("_TRELLIS_", "_LUT4", "_CCU2C", "_MULT18X18D", "_PFUMX", "_L6MUX21", "$", "_SB_"):
        cut = cell.find(marker)
        if cut > 0:
            cell = cell[:cut]
    return cell


def critical_path(report: dict[str, Any]) -> dict[str, Any] | None:
    """The slowest path of a nextpnr ``--report``: total delay, its two ends, the RTL blocks it goes
    through in order and its logic steps (None when the report has no paths)."""
    worst = None
    for path in report.get("critical_paths", []):
        steps = path.get("path", [])
        total = sum(float(st.get("delay", 0.0)) for st in steps)
        if steps and (worst is None or total > worst[0]):
            worst = (total, steps)
    if worst is None:
        return None
    total, steps = worst
    through: list[str] = []
    for st in steps:
        for end in ("from", "to"):
            mod = _cell_module(st.get(end, {}).get("cell", ""))
            if mod not in through:   # first appearance order (a LUT is named after a net it touches)
                through.append(mod)
    return {"delay_ns": round(total, 3), "from": _cell_signal(steps[0].get("from", {}).get("cell", "?")),
            "to": _cell_signal(steps[-1].get("to", {}).get("cell", "?")), "through": through,
            "logic_steps": sum(1 for st in steps if st.get("type") == "logic")}


def count_netlist_cells(netlist: dict[str, Any]) -> dict[str, int]:
    """Cell type -> count over all modules of a Yosys JSON netlist."""
    counts: dict[str, int] = {}
    for mod in netlist.get("modules", {}).values():
        for cell in mod.get("cells", {}).values():
            counts[cell["type"]] = counts.get(cell["type"], 0) + 1
    return counts


def netlist_ffs(counts: dict[str, int], target: str) -> int:
    if target == "ice40":
        return sum(n for t, n in counts.items() if t.startswith("SB_DFF"))
    return counts.get("TRELLIS_FF", 0)


#: LUTs (TRELLIS_COMB / ICESTORM_LC) of each device, as nextpnr reports them.
LUT_AVAILABLE = {("ecp5", "12k"): 24288, ("ecp5", "25k"): 24288, ("ecp5", "45k"): 43848,
                 ("ecp5", "85k"): 83640, ("ice40", "hx1k"): 1280, ("ice40", "hx8k"): 7680,
                 ("ice40", "lp8k"): 7680, ("ice40", "up5k"): 5280}

#: Block RAMs and multipliers of each device (Lattice ECP5 family data sheet FPGA-DS-02012, table 1.1:
#: EBR 32/56/108/208, 18x18 multipliers 28/28/72/156; iCE40 LP/HX and UltraPlus data sheets:
#: 4 Kbit RAMs 16/32/32/30, SB_MAC16 0/0/0/8). The 85k figures are what nextpnr reports (208, 156).
BLOCK_AVAILABLE = {("ecp5", "12k"): (32, 28), ("ecp5", "25k"): (56, 28), ("ecp5", "45k"): (108, 72),
                   ("ecp5", "85k"): (208, 156), ("ice40", "hx1k"): (16, 0), ("ice40", "hx8k"): (32, 0),
                   ("ice40", "lp8k"): (32, 0), ("ice40", "up5k"): (30, 8)}


def netlist_fit_error(res: dict[str, Any], target: str, device: str) -> DoesNotFit | None:
    """A DoesNotFit when the Yosys netlist alone already needs more block RAMs, multipliers or LUTs than
    the device has (placement only adds cells), so a run that cannot fit fails before nextpnr's hour."""
    part = DEVICES[target][device][2]
    brams, dsps = BLOCK_AVAILABLE[(target, device)]
    cells = RESOURCE_CELLS[target]
    for kind, used, avail in (("bram", res["brams"], brams), ("dsp", res["dsps"], dsps),
                              ("lut", res["luts"], res["lut_available"])):
        if used > avail:
            return DoesNotFit(f"design does not fit {part}: the Yosys netlist needs {used} {cells[kind]} but "
                              f"the device has {avail}", cells[kind], used, avail)
    return None


def netlist_result(counts: dict[str, int], target: str, device: str, top: str = "top") -> dict[str, Any]:
    """Resource use from the Yosys netlist alone (no place and route, so no fmax).

    ECP5: TRELLIS_COMB = LUT4 + 2 per CCU2C (a carry cell packs two LUT4s); iCE40: one logic cell per
    SB_LUT4 plus the flip-flops that could not be packed with one (an upper bound of max(LUT, FF))."""
    flag, pkg, part = DEVICES[target][device]
    if target == "ecp5":
        luts = counts.get("LUT4", 0) + 2 * counts.get("CCU2C", 0)
        brams, dsps = counts.get("DP16KD", 0), counts.get("MULT18X18D", 0)
    else:
        luts = max(counts.get("SB_LUT4", 0), netlist_ffs(counts, target))
        brams, dsps = counts.get("SB_RAM40_4K", 0), counts.get("SB_MAC16", 0)
    return {"target": target, "device": device, "part": part, "package": pkg, "top": top, "luts": luts,
            "ffs": netlist_ffs(counts, target), "brams": brams, "dsps": dsps, "fmax_mhz": None,
            "lut_available": LUT_AVAILABLE[(target, device)], "utilization": {}, "pnr": False}


def fit_error(log_text: str, target: str, part: str) -> DoesNotFit | None:
    """A DoesNotFit naming the resource when nextpnr's log says the design is too big, else None."""
    import re

    # "Info:          TRELLIS_COMB: 30000/24288   123%" (the utilisation table nextpnr prints first)
    worst = None
    for m in re.finditer(r"^\s*Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+(\d+)%", log_text, re.M):
        name, used, avail = m.group(1), int(m.group(2)), int(m.group(3))
        if used > avail and (worst is None or used / max(avail, 1) > worst[1] / max(worst[2], 1)):
            worst = (name, used, avail)
    if worst:
        name, used, avail = worst
        return DoesNotFit(f"design does not fit {part}: needs {used} {name} but the device has {avail} "
                          f"({100.0 * used / max(avail, 1):.0f} %); pick a larger --device or a smaller config",
                          name, used, avail)
    m = re.search(r"(Design uses more|Unable to place|unable to place|failed to place)[^\n]*", log_text)
    if m:
        cell = re.search(r"cell '?([^'\s]+)'? of type '?(\w+)", log_text)
        what = f" (cell type {cell.group(2)})" if cell else ""
        return DoesNotFit(f"design does not fit {part}{what}: nextpnr: {m.group(0).strip()}",
                          cell.group(2) if cell else None)
    return None


# ---- the flow ---------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    base = os.environ.get("BITMOS_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bitmos" / "synth" if not os.environ.get("BITMOS_CACHE") else Path(base) / "synth"


# ---- the result cache ------------------------------------------------------------------------------
#
# One JSON file per result, ``<key>.json`` (the key is a hex hash, never a name from a file), holding the result's
# fields and ``entry_sha256`` over them. Reading is forgiving in one direction only: anything that is not a whole
# entry of this key (missing, a folder or a FIFO, corrupt, truncated, of another key, a field of the wrong type)
# is a cache miss, so the design is synthesized again and the entry rewritten; nothing in it becomes a path.

_CACHE_MAX_BYTES = 16 << 20
_DERIVED_KEYS = {"binary_ops_per_lut_cycle", "luts_per_binary_op"}


def _entry_digest(d: dict[str, Any]) -> str:
    body = {k: v for k, v in d.items() if k != "entry_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _type_ok(annotation: str, v: Any) -> bool:
    """``v`` has the type a SynthResult field is annotated with (the annotations are strings)."""
    alts = [a.strip() for a in annotation.split("|")]
    if v is None:
        return "None" in alts
    for a in alts:
        if a == "int" and isinstance(v, int) and not isinstance(v, bool):
            return True
        if a == "float" and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
            return True
        if a in ("str", "bool") and type(v).__name__ == a:
            return True
        if a.startswith("dict[str, str]") and isinstance(v, dict):
            return all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())
        if a.startswith("dict[str, dict[str, int]]") and isinstance(v, dict):
            return all(isinstance(k, str) and isinstance(x, dict) and all(
                isinstance(n, str) and isinstance(c, int) and not isinstance(c, bool) for n, c in x.items())
                for k, x in v.items())
        if a.startswith("dict[str, Any]") and isinstance(v, dict):
            return all(isinstance(k, str) for k in v)
        if a.startswith("list[str]") and isinstance(v, list):
            return all(isinstance(x, str) for x in v)
    return False


def read_cache_entry(entry: Path, key: str) -> "SynthResult | None":
    """The cached result of ``key`` in ``entry``, or None (a miss) if it is not a whole, valid entry of that key."""
    try:
        if not entry.is_file() or entry.stat().st_size > _CACHE_MAX_BYTES:
            return None
        d = json.loads(entry.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(d, dict) or d.get("key") != key:
        return None
    if "entry_sha256" in d:
        if d["entry_sha256"] != _entry_digest(d):
            return None
    # an entry of an older bitmos carries no checksum: only the field checks below guard it
    types = {f.name: f.type for f in dataclasses.fields(SynthResult)}
    required = {f.name for f in dataclasses.fields(SynthResult)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if set(d) - set(types) - _DERIVED_KEYS - {"entry_sha256"} or required - set(d):
        return None
    if not all(_type_ok(types[k], v) for k, v in d.items() if k in types):
        return None
    if any(isinstance(d[k], (int, float)) and d[k] < 0 for k in ("luts", "ffs", "brams", "dsps", "lut_available")
           if d.get(k) is not None):
        return None
    return SynthResult.from_dict(d)


def write_cache_entry(entry: Path, result: "SynthResult") -> str | None:
    """Write ``result`` to ``entry`` atomically; the reason as a string if the cache cannot be written."""
    d = result.to_dict()
    d["cached"] = False
    d["entry_sha256"] = _entry_digest(d)
    try:
        write_json_atomic(entry, d)
    except OSError as exc:
        return f"cannot write {entry}: {exc.strerror or exc}"
    return None


def synth_key(verilog: str, top: str, target: str, device: str, package: str, opts: dict[str, Any],
              tools: dict[str, str]) -> str:
    blob = json.dumps({"verilog": hashlib.sha256(verilog.encode()).hexdigest(), "top": top,
                       "target": target, "device": device, "package": package, "opts": opts,
                       "tools": tools, "flow": FLOW_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def synthesize(verilog: str, top: str, *, target: str = "ecp5", device: str | None = None,
               package: str | None = None, freq_mhz: float = 100.0, seed: int = 1,
               out_of_context: bool | None = None, cache_dir: str | Path | None = None,
               use_cache: bool = True, timeout: float = DEFAULT_TIMEOUT_S, workdir: str | Path | None = None,
               binary_ops_per_cycle: int | None = None, config: dict[str, Any] | None = None,
               config_name: str | None = None, component: str | None = None, pnr: bool = True,
               log=None) -> SynthResult:
    """Synthesize, place and route ``verilog`` (top module ``top``) and return its resource use and fmax."""
    if target not in DEVICES:
        raise SynthError(f"unknown target {target!r}; targets: {', '.join(DEVICES)}")
    device = device or DEFAULT_DEVICE[target]
    if device not in DEVICES[target]:
        raise SynthError(f"unknown {target} device {device!r}; devices: {', '.join(DEVICES[target])}")
    flag, default_pkg, part = DEVICES[target][device]
    package = package or default_pkg
    ooc = (target == "ecp5") if out_of_context is None else out_of_context
    if ooc and target != "ecp5":
        raise SynthError("out-of-context place and route is only available for ecp5")
    pnr_tool = f"nextpnr-{target}"
    tools = {"yosys": tool_version("yosys"), pnr_tool: tool_version(pnr_tool)}
    opts = {"freq": freq_mhz, "seed": seed, "ooc": ooc, "pnr": pnr}
    key = synth_key(verilog, top, target, device, package, opts, tools)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    entry = cache / f"{key}.json"
    res = read_cache_entry(entry, key) if use_cache else None
    if res is not None:
        res.cached = True
        res.config, res.config_name, res.component = config, config_name, component
        if binary_ops_per_cycle is not None:
            res.binary_ops_per_cycle = binary_ops_per_cycle
        return res

    say = log or (lambda msg: None)
    tmp_dir = Path(tempfile.mkdtemp(prefix="bitmos-synth-")) if workdir is None else None
    wd = Path(workdir) if workdir is not None else tmp_dir  # type: ignore[assignment]
    wd.mkdir(parents=True, exist_ok=True)
    try:
        (wd / "design.v").write_text(verilog)
        t0 = time.monotonic()
        synth_cmd = "synth_ecp5" if target == "ecp5" else "synth_ice40"
        if target == "ice40" and device == "up5k":
            synth_cmd += " -dsp"   # the UP5K has 8 SB_MAC16; without -dsp every multiply is LUTs
        script = f"read_verilog -sv design.v; {synth_cmd} -top {top} -json synth.json; tee -o stat.txt stat"
        ycmd = find_tool("yosys") + ["-q", "-p", script]
        say(f"yosys: {synth_cmd} -top {top} ({len(verilog)} bytes of Verilog)")
        p = _run(ycmd, cwd=wd, timeout=timeout, log=wd / "yosys.log", what="yosys")
        if p.returncode != 0:
            tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-15:])
            raise SynthError(f"yosys failed (exit {p.returncode}):\n{tail}")
        netlist = json.loads((wd / "synth.json").read_text())
        counts = count_netlist_cells(netlist)
        netlist_res = netlist_result(counts, target, device, top)
        nofit = netlist_fit_error(netlist_res, target, device)
        if nofit:
            raise nofit
        commands = [" ".join(ycmd[-3:-1]) + f' "{script}"']
        common = dict(binary_ops_per_cycle=binary_ops_per_cycle, config=config, config_name=config_name,
                      component=component, tools=tools, key=key, out_of_context=ooc,
                      verilog_sha256=hashlib.sha256(verilog.encode()).hexdigest(),
                      meta_bits=AcceleratorConfig.from_dict(config).meta_bits if config else None)
        if not pnr:
            result = SynthResult(**netlist_res, **common, seconds=round(time.monotonic() - t0, 2),
                                 commands=commands)
        else:
            ncmd = find_tool(pnr_tool) + [flag, "--package", package, "--json", "synth.json", "--report",
                                     "report.json", "--freq", f"{freq_mhz:g}", "--seed", str(seed),
                                     "--timing-allow-fail"]
            if ooc:
                ncmd.append("--out-of-context")
            say(f"{pnr_tool}: {part} {package}{' out-of-context' if ooc else ''}")
            p = _run(ncmd, cwd=wd, timeout=timeout, log=wd / "nextpnr.log", what=pnr_tool)
            text = p.stdout + "\n" + p.stderr
            if p.returncode != 0 or not (wd / "report.json").exists():
                nofit = fit_error(text, target, part)
                if nofit:
                    raise nofit
                tail = "\n".join(text.strip().splitlines()[-15:])
                raise SynthError(f"{pnr_tool} failed on {part} (exit {p.returncode}):\n{tail}")
            parsed = parse_report(json.loads((wd / "report.json").read_text()), target)
            if parsed["ffs"] is None:
                parsed["ffs"] = netlist_ffs(counts, target)
            result = SynthResult(target=target, device=device, part=part, package=package, top=top, **common,
                                 seconds=round(time.monotonic() - t0, 2), commands=commands + [" ".join(ncmd)],
                                 **parsed)
            over = [(k, v) for k, v in result.utilization.items() if v["used"] > v["available"]]
            if over:
                k, v = over[0]
                raise DoesNotFit(f"design does not fit {part}: needs {v['used']} {k} but the device has "
                                 f"{v['available']}", k, v["used"], v["available"])
    except SynthError as exc:
        if tmp_dir is not None:   # kept for inspection: say where
            exc.args = (f"{exc.args[0]}\n(design, netlist and tool logs kept in {wd})",) + exc.args[1:]
        raise
    except BaseException:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    if use_cache:
        problem = write_cache_entry(entry, result)
        if problem:   # an hour of place and route is not thrown away because the cache folder is read-only
            say(f"result not cached: {problem}")
    if tmp_dir is not None:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # success: nothing to inspect
    return result


# ---- Verilog from the bitmos RTL -------------------------------------------------------------------

TOPS = ("pe", "array", "accelerator")


def rtl_verilog(cfg, top: str) -> tuple[str, str]:
    """(Verilog text, top module name) of component ``top`` of the bitmos RTL for ``cfg``.

    ``accelerator`` is the text ``bitmos rtl emit`` writes and the benches simulate (``bitmos.rtl.emit.verilog``).
    """
    if top not in TOPS:
        raise SynthError(f"unknown --top {top!r}; choose one of {', '.join(TOPS)}")
    try:
        import bitmos.rtl as rtl  # noqa: F401
    except ModuleNotFoundError as exc:
        raise SynthError(f"the RTL (bitmos.rtl) is not importable: {exc}") from None
    from bitmos.explore import rtlbridge

    return rtlbridge.emit(cfg, top)
