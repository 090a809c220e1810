"""Verilog and a JSON manifest (ports, parameters) for one AcceleratorConfig.

The Verilog has no ``always @*`` blocks: Yosys lowers every combinational process to multiplexers
(``proc -norom``), so all combinational logic is continuous assignments (``assign``; a ``$pmux`` is a
function called from one). ``amaranth.back.verilog.convert`` keeps the processes (``proc -nomux``)
and writes them as ``always @*``, which run only when an input changes. Yosys wakes them at time 0
through a dummy ``reg ... = 0`` read by every such block: in Verilog-2005 the declaration
initialiser acts like an ``initial`` assignment, an event; in SystemVerilog (IEEE 1800 6.8) it runs
before any process starts, no event. Icarus in ``-g2012`` mode, the mode cocotb runs it in, so left
every ``always @*`` whose inputs kept their initial values at X: the DMA engine's beats-per-line
decoder of ``buf`` stayed X until the first transfer to a buffer other than X (code 0), so a first
``load`` into XBUF wrote nothing. Continuous assignments are evaluated at time 0 by Icarus (either
mode) and Verilator. docs/rtl.md ("Icarus") has the reproduction.
"""

from __future__ import annotations

from pathlib import Path

from amaranth import Shape
from amaranth._toolchain.yosys import find_yosys
from amaranth.back import rtlil

from bitmos.config import AcceleratorConfig
from bitmos.errors import ConfigError, FormatError
from bitmos.fileio import atomic_folder, check_safe_name, write_json_atomic, write_text_atomic
from bitmos.rtl.buffers import buffer_shapes
from bitmos.rtl.common import check_config
from bitmos.rtl.signatures import CAUSE_BITS, CYCLE_BITS
from bitmos.rtl.top import Accelerator

__all__ = ["TOP_NAME", "emit", "manifest", "port_list", "to_verilog", "verilog"]

#: Verilog module name of the top level.
TOP_NAME = "bitmos_accel"
MANIFEST_VERSION = 1


def port_list(top: Accelerator) -> list[dict]:
    """Every top-level port: Verilog name, direction (from the accelerator's side) and width."""
    ports = [{"name": "clk", "dir": "in", "width": 1}, {"name": "rst", "dir": "in", "width": 1}]
    for path, member in top.signature.members.flatten():
        if member.is_port:
            ports.append({"name": "__".join(str(p) for p in path),
                          "dir": "in" if member.flow.name == "In" else "out",
                          "width": Shape.cast(member.shape).width})
    return ports


def manifest(cfg: AcceleratorConfig, top: Accelerator, verilog_file: str) -> dict:
    shapes = buffer_shapes(cfg)
    return {
        "manifest_version": MANIFEST_VERSION,
        "top": TOP_NAME,
        "verilog": verilog_file,
        "config": cfg.to_dict(),
        "config_fingerprint": cfg.fingerprint(),
        "clock": "clk (rising edge)", "reset": "rst (synchronous, active high)",
        "ports": port_list(top),
        "buffers": {name: {"width": w, "depth": d} for name, (w, d) in shapes.items()},
        "parameters": {"cause_bits": CAUSE_BITS, "cycle_bits": CYCLE_BITS,
                       "beats_per_line": {b: cfg.line_bits(b) // cfg.ext_bw_bits for b in "XWSO"}},
    }


def to_verilog(top, name: str) -> str:
    """``top`` as Verilog-2005 without ``always @*`` (see the module docstring).

    The script is ``amaranth.back.verilog``'s with ``proc -norom`` for ``proc -nomux -norom``, and
    without ``-norename`` (Icarus takes a call of an escaped function name such as
    ``\\$procmux$12`` for a system function): Amaranth's signal names are kept, Yosys' internal
    ``$``-names become ``_N_``.
    """
    text = rtlil.convert(top, name=name, emit_src=False)
    yosys = find_yosys(lambda ver: ver >= (0, 40))  # the requirement of amaranth.back.verilog
    script = [f"read_rtlil <<rtlil\n{text}\nrtlil", "proc -norom", "memory_collect", "write_verilog"]
    return yosys.run(["-q", "-"], "\n".join(script))


def verilog(cfg: AcceleratorConfig) -> str:
    """The accelerator of ``cfg`` as Verilog, module :data:`TOP_NAME`: the text :func:`emit` writes.

    The one road to the accelerator's Verilog: the benches simulate it (``bitmos.rtl.runner``) and
    synthesis maps it (``bitmos.explore.rtlbridge``).

    Raises
    ------
    TypeError, ValueError
        ``cfg`` is not a supported AcceleratorConfig (see :func:`bitmos.rtl.common.check_config`).
    """
    return _convert(cfg)[1]


def _convert(cfg: AcceleratorConfig) -> tuple[Accelerator, str]:
    top = Accelerator(check_config(cfg))
    return top, to_verilog(top, TOP_NAME)


def emit(cfg: AcceleratorConfig, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``bitmos_accel_<name>.v`` and ``bitmos_accel_<name>.json`` into ``out_dir``.

    The folder changes whole (``bitmos.fileio.atomic_folder``): a failing or interrupted emit leaves it as it
    was. Other files in it (another config's emit) are kept; a folder that is not empty and holds no
    ``bitmos_accel_*.json`` is refused rather than written into.

    Raises
    ------
    TypeError, ValueError
        ``cfg`` is not a supported AcceleratorConfig (see :func:`bitmos.rtl.common.check_config`).
    """
    check_config(cfg)   # before touching the folder
    try:
        check_safe_name(cfg.name, "config name")   # it becomes the file names
    except FormatError as exc:
        raise ConfigError(str(exc), field="name") from None
    out = Path(out_dir)
    stem = f"{TOP_NAME}_{cfg.name}"
    vname, jname = f"{stem}.v", f"{stem}.json"
    with atomic_folder(out, marker=f"{TOP_NAME}_*.json", keep_existing=True) as tmp:
        top, text = _convert(cfg)
        write_text_atomic(tmp / vname, text)
        write_json_atomic(tmp / jname, manifest(cfg, top, vname))
    return out / vname, out / jname
