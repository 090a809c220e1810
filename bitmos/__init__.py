"""bitmos: an open co-design toolkit for 1-bit LLM accelerators.

The package root is the contract shared by every implementation: the accelerator configuration
(:mod:`bitmos.config`), the number formats (:mod:`bitmos.formats`), the instruction set and its cycle
costs (:mod:`bitmos.isa`), plus atomic file writing (:mod:`bitmos.fileio`). It imports none of
``bitmos.model``, ``bitmos.compiler``, ``bitmos.sim`` or ``bitmos.rtl``.
"""

__version__ = "0.1.0"
