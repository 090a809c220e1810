"""Amaranth-simulator harnesses: a block plus the memories it talks to, initialised from Python."""

from amaranth import Elaboratable, Module
from amaranth.lib.memory import Memory


class WithMemories(Elaboratable):
    """``dut`` with one Memory per named port; ``ports`` maps port name -> (kind, depth, width, init)."""

    def __init__(self, dut, ports):
        self.dut = dut
        self.mems = {}
        self._ports = ports
        for name, (kind, depth, width, init, gran) in ports.items():
            self.mems[name] = Memory(shape=width, depth=depth, init=init)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        shared = {}
        added = set()
        for name, (kind, depth, width, init, gran) in self._ports.items():
            mem = self.mems[name]
            if id(mem) not in added:
                m.submodules[f"mem_{name}"] = mem
                added.add(id(mem))
            bus = getattr(self.dut, name)
            if kind == "r":
                port = mem.read_port()
                m.d.comb += [port.addr.eq(bus.addr), port.en.eq(bus.en), bus.data.eq(port.data)]
            else:
                port = mem.write_port(granularity=gran)
                m.d.comb += [port.addr.eq(bus.addr), port.en.eq(bus.en), port.data.eq(bus.data)]
        return m
