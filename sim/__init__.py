"""bitmos.sim: the cycle-accurate simulator of docs/isa.md, its energy model and reports.

* :mod:`bitmos.sim.machine` -- :class:`Simulator` (functional and timing-only), :class:`RunResult`.
* :mod:`bitmos.sim.analysis` -- vectorized decode, legality checks, DMA hazards and timing.
* :mod:`bitmos.sim.energy` -- per-action counts, energy tables (``sim/energy_tables/*.toml``).
* :mod:`bitmos.sim.report` -- text / JSON / PNG reports (roofline, energy breakdown, Gantt).
* :mod:`bitmos.sim.cli` -- ``bitmos simulate``.

Layering: imports only the ``bitmos`` contract (never bitmos.model, bitmos.compiler or bitmos.rtl).
"""

from bitmos.sim.analysis import DMAHazardError  # noqa: F401
from bitmos.sim.energy import EnergyTable, count_actions, energy_breakdown  # noqa: F401
from bitmos.sim.machine import MachineState, RunResult, Simulator, Trace  # noqa: F401
