"""bitmos RTL: the accelerator in Amaranth, generated from an :class:`~bitmos.config.AcceleratorConfig`.

Blocks (one module each): :mod:`.pe` (XNOR/AND-popcount PE), :mod:`.array` (systolic array that runs
``matmul``), :mod:`.scale_unit` (router, softmax, mixing, quantizer, output scaling: ``quant`` and
``scaleout``), :mod:`.buffers` (on-chip memories), :mod:`.dma` (external memory engine),
:mod:`.controller` (fetch, decode, timing, errors) and :mod:`.top` (the accelerator). Port bundles
shared between blocks are in :mod:`.signatures`; :mod:`.emit` writes Verilog and a manifest.

This package imports only ``bitmos`` (the contract) and Amaranth; see docs/rtl.md.
"""
