"""Port bundles shared between the accelerator's blocks and its testbenches.

* :class:`ExtMemSignature`: the DMA engine's external memory port (initiator = accelerator).
* :class:`HostSignature`: the host's control port (initiator = host): IMEM loading, clear/start,
  status.
* :class:`LayerRegistersSignature`: the layer registers SETR writes (initiator = the controller,
  which holds them), one member per ``bitmos.isa.Reg``, shared by every unit that reads them.

All follow ``amaranth.lib.stream.Signature``: parameters stored privately and exposed as read-only
properties, with ``__eq__`` and ``__repr__``; ``create()`` is inherited from ``wiring.Signature``.
"""

from __future__ import annotations

from amaranth import Shape
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from bitmos import isa

__all__ = ["ExtMemSignature", "HostSignature", "LayerRegistersSignature", "register_shape",
           "CAUSE_BITS", "CYCLE_BITS"]

#: Width of the error cause code (causes 0..5, bitmos.isa.CAUSE_*).
CAUSE_BITS = 3
#: Width of the run cycle counter.
CYCLE_BITS = 48


def _check_width(name: str, value, lo: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be at least {lo}, not {value!r}")


class ExtMemSignature(wiring.Signature):
    """External memory port, seen from the accelerator (the initiator).

    Protocol (fixed timing, no back-pressure; the memory model must keep up):

    * Request: ``req`` is high for one cycle with ``req_we`` (1 = write), ``req_addr`` (byte
      address) and ``req_len`` (bytes, a multiple of ``data_bits/8``).
    * Read (``req_we = 0``) issued in cycle r: the memory drives beat b (bytes
      ``req_addr + b*data_bits/8`` onward, little-endian) on ``rdata`` with ``rvalid`` high in cycle
      ``r + latency + b``, for ``req_len*8/data_bits`` beats. ``latency >= 1``.
    * Write (``req_we = 1``): the accelerator drives consecutive beats on ``wdata`` with ``wvalid``
      high, in order, starting at ``req_addr``, each no earlier than the cycle after its request; the
      memory stores each beat in the cycle it is valid.
    * Several requests may be outstanding (the DMA engine's queue); their beats come in request
      order, a read's beats never overlapping another read's, a write's beats going to the oldest
      write request with beats left. The memory is ordered as requested: a read beat carries every
      byte an earlier-requested write beat stored, one in the read beat's own cycle included.

    Parameters
    ----------
    addr_bits : int
        Width of ``req_addr``.
    data_bits : int
        Width of a beat (the config's ``ext_bw_bits``).
    len_bits : int
        Width of ``req_len``.

    Raises
    ------
    TypeError, ValueError
        If a width is not a positive integer (``data_bits`` must be a multiple of 8).
    """

    def __init__(self, *, addr_bits: int, data_bits: int, len_bits: int = 32):
        _check_width("addr_bits", addr_bits)
        _check_width("data_bits", data_bits, 8)
        _check_width("len_bits", len_bits)
        if data_bits % 8:
            raise ValueError(f"data_bits must be a multiple of 8, not {data_bits!r}")
        self._addr_bits, self._data_bits, self._len_bits = addr_bits, data_bits, len_bits
        super().__init__({
            "req": Out(1), "req_we": Out(1), "req_addr": Out(addr_bits), "req_len": Out(len_bits),
            "wvalid": Out(1), "wdata": Out(data_bits),
            "rvalid": In(1), "rdata": In(data_bits),
        })

    @property
    def addr_bits(self) -> int:
        return self._addr_bits

    @property
    def data_bits(self) -> int:
        return self._data_bits

    @property
    def len_bits(self) -> int:
        return self._len_bits

    def __eq__(self, other):
        return (type(other) is type(self) and self.addr_bits == other.addr_bits
                and self.data_bits == other.data_bits and self.len_bits == other.len_bits)

    def __repr__(self):
        return (f"ExtMemSignature(addr_bits={self.addr_bits}, data_bits={self.data_bits}, "
                f"len_bits={self.len_bits})")


class HostSignature(wiring.Signature):
    """Host control port, seen from the host (the initiator).

    * ``imem_we``/``imem_addr``/``imem_data``: write one 64-bit instruction word per cycle (while
      idle).
    * ``clear`` (one-cycle pulse while idle): zero IMEM and every on-chip buffer; ``busy`` is high
      until it finishes (max depth cycles).
    * ``start`` (one-cycle pulse while idle): reset registers and status, run from pc 0. ``busy``
      stays high until ``done``.
    * Status: ``done``, ``error``, ``cause`` (bitmos.isa.CAUSE_*), ``cycles`` (the run's cycle
      count, valid with ``done``), ``pc``.

    Parameters
    ----------
    imem_addr_bits : int
        Width of ``imem_addr`` (and of ``pc``, which can reach ``imem_words``).
    """

    def __init__(self, *, imem_addr_bits: int):
        _check_width("imem_addr_bits", imem_addr_bits)
        self._imem_addr_bits = imem_addr_bits
        super().__init__({
            "imem_we": Out(1), "imem_addr": Out(imem_addr_bits), "imem_data": Out(64),
            "clear": Out(1), "start": Out(1),
            "busy": In(1), "done": In(1), "error": In(1), "cause": In(CAUSE_BITS),
            "cycles": In(CYCLE_BITS), "pc": In(imem_addr_bits + 1),
        })

    @property
    def imem_addr_bits(self) -> int:
        return self._imem_addr_bits

    def __eq__(self, other):
        return type(other) is type(self) and self.imem_addr_bits == other.imem_addr_bits

    def __repr__(self):
        return f"HostSignature(imem_addr_bits={self.imem_addr_bits})"


#: The layer registers the RTL holds: every :class:`bitmos.isa.Reg` but the vector unit's, which it does not
#: build yet (:func:`bitmos.rtl.common.check_config` refuses ``vector_unit`` = 1; their SETR is an illegal field).
REGISTERS = tuple(r for r in isa.Reg if r not in isa.VECTOR_REGS)


def register_shape(reg: isa.Reg) -> Shape:
    """The narrowest shape holding every legal value of ``reg`` (``bitmos.isa.REG_RANGE``; SMUL is signed)."""
    lo, hi = isa.REG_RANGE[reg]
    return Shape.cast(range(lo, hi + 1))


class LayerRegistersSignature(wiring.Signature):
    """The layer registers, seen from the controller (the initiator: it holds them and SETR writes them).

    One member per register of :data:`REGISTERS`, named ``reg.name.lower()`` (``k``, ``rshift``, ``oshift``,
    ``router``, ``sin``, ``smul``, ``ebase``), of :func:`register_shape`. The units take
    ``In(LayerRegistersSignature())`` and the top level joins them all with one ``wiring.connect``.
    """

    def __init__(self):
        super().__init__({reg.name.lower(): Out(register_shape(reg)) for reg in REGISTERS})

    def __eq__(self, other):
        return type(other) is type(self)

    def __repr__(self):
        return "LayerRegistersSignature()"
