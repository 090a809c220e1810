"""Design-space exploration for bitmos: FPGA synthesis runs, an area model fitted on them, and sweeps.

* :mod:`bitmos.explore.synth` — Verilog -> Yosys -> nextpnr (ECP5 / iCE40) with a result cache.
* :mod:`bitmos.explore.area` — LUT/FF/BRAM model fitted by least squares on recorded synthesis runs.
* :mod:`bitmos.explore.perf` — throughput and energy per token for a model shape on a config.
* :mod:`bitmos.explore.sweep` — grid/list sweeps, resumable, local processes or a Dask cluster.
* :mod:`bitmos.explore.pareto` — Pareto fronts.

See docs/fpga.md and docs/dse.md.
"""
