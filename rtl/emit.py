"""Verilog and a JSON manifest (ports, parameters) for one AcceleratorConfig."""

from __future__ import annotations

from pathlib import Path

from amaranth import Shape
from amaranth.back import verilog

from bitmos.config import AcceleratorConfig
from bitmos.fileio import write_json_atomic, write_text_atomic
from bitmos.rtl.buffers import buffer_shapes
from bitmos.rtl.common import check_config
from bitmos.rtl.signatures import CAUSE_BITS, CYCLE_BITS
from bitmos.rtl.top import Accelerator

__all__ = ["TOP_NAME", "emit", "manifest", "port_list"]

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


def emit(cfg: AcceleratorConfig, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``bitmos_accel_<name>.v`` and ``bitmos_accel_<name>.json`` into ``out_dir`` (atomically).

    Raises
    ------
    TypeError, ValueError
        ``cfg`` is not a supported AcceleratorConfig (see :func:`bitmos.rtl.common.check_config`).
    """
    check_config(cfg)
    out = Path(out_dir)
    stem = f"{TOP_NAME}_{cfg.name}"
    top = Accelerator(cfg)
    text = verilog.convert(top, name=TOP_NAME, emit_src=False)
    vpath, jpath = out / f"{stem}.v", out / f"{stem}.json"
    write_text_atomic(vpath, text)
    write_json_atomic(jpath, manifest(cfg, top, vpath.name))
    return vpath, jpath
