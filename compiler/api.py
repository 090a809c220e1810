"""The compiler's Python API: compile_linear, compile_model, host I/O helpers.

See docs/compiler.md for the schedule and the memory layout. Nothing here imports bitmos.sim,
bitmos.rtl or bitmos.model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bitmos.config import AcceleratorConfig
from bitmos.container import MANIFEST_VERSION, MemoryImage, Program, manifest_digest
from bitmos.errors import ConfigError, FormatError, UnsupportedError
from bitmos.export import BinaryLinearExport, ModelExport
from bitmos.fileio import (atomic_folder, check_safe_name, sha256_hex, why_not_a_file, write_bytes_atomic,
                           write_json_atomic, write_text_atomic)
from bitmos.isa import Op, Reg, disassemble, encode, setr

from bitmos.compiler.lower import LayerSpec, ceil_div, lower_linear, synthetic_spec
from bitmos.compiler.schedule import Regions, Schedule, Tiling, build_program, make_tiling
from bitmos.compiler.shapes import is_shape_source, llama_linears, load_shape

ALIGN = 64                      # region alignment: one EBASE unit
#: Shape-only models whose memory image would exceed this are compiled timing-only automatically.
AUTO_TIMING_ONLY_BYTES = 256 << 20


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


# ---- tiling choice -------------------------------------------------------------------------------

def region_sizes(til: Tiling, cfg: AcceleratorConfig) -> dict[str, int]:
    """Bytes of each external region of a layer with tiling ``til``."""
    wb, sb, xb, ob = (cfg.line_bits(b) // 8 for b in "WSXO")
    sizes = {"weights": til.NT * til.wlines * wb,
             "sbuf": (til.sout_line + til.NT) * sb if cfg.experts >= 1 else 0,
             "input": til.T * til.XL * xb,
             "output": (til.ngroups * til.NT * cfg.rows if til.mode == "token" else til.NT) * ob}
    return sizes


def _layout(til: Tiling, cfg: AcceleratorConfig, base: int) -> tuple[Regions, dict[str, int]]:
    sizes = region_sizes(til, cfg)
    addr = {}
    at = _align(base)
    for key in ("weights", "sbuf", "input", "output"):
        addr[key] = at
        at = _align(at + sizes[key])
    return Regions(**addr), sizes


def _split_programs(spec: LayerSpec, cfg: AcceleratorConfig, til: Tiling, regions: Regions,
                    groups: range, tiles: range, label: str = "") -> list[tuple[range, range, Schedule]]:
    """One schedule per part; parts are split (tokens first, then tiles) until each fits IMEM."""
    sch = build_program(spec, cfg, til, regions, groups, tiles, label=label)
    if len(sch.words) <= cfg.imem_words:
        return [(groups, tiles, sch)]
    if len(groups) > 1:
        # keep token blocks whole where possible
        gpb = til.groups_per_block
        half = max(1, (len(groups) // 2 // gpb) * gpb) if len(groups) > gpb else len(groups) // 2
        a, b = range(groups.start, groups.start + half), range(groups.start + half, groups.stop)
        return _split_programs(spec, cfg, til, regions, a, tiles, label) + _split_programs(spec, cfg, til, regions, b, tiles, label)
    if len(tiles) > 1:
        half = len(tiles) // 2
        a, b = range(tiles.start, tiles.start + half), range(tiles.start + half, tiles.stop)
        return _split_programs(spec, cfg, til, regions, groups, a, label) + _split_programs(spec, cfg, til, regions, groups, b, label)
    raise UnsupportedError(f"layer {spec.name!r}: the program for one token group and one output tile needs "
                           f"{len(sch.words)} instruction words; imem_words = {cfg.imem_words}",
                           field="imem_words")


def _candidates(spec: LayerSpec, cfg: AcceleratorConfig, tokens: int) -> list[Tiling]:
    modes = ["token"] if tokens > 1 else ["plane", "token"]
    out, errors = [], []
    for mode in modes:
        try:
            top = make_tiling(spec, cfg, tokens, mode)
        except UnsupportedError as exc:
            errors.append(exc)
            continue
        tpbs, t = [], top.tpb
        while t >= 1 and len(tpbs) < 8:
            tpbs.append(t)
            t //= 2
        for t in tpbs:
            out.append(make_tiling(spec, cfg, tokens, mode, tpb=t))
            if t > 1:
                out.append(make_tiling(spec, cfg, tokens, mode, tpb=t, taper=True))
    if not out:
        raise errors[0]
    return out


_TILING_CACHE: dict[tuple, Tiling] = {}


def check_fits_memory(spec: LayerSpec, cfg: AcceleratorConfig, tokens: int) -> None:
    """The UnsupportedError :func:`choose_tiling` raises when no tiling of ``spec`` at ``tokens`` tokens fits the
    external memory, without scheduling anything (for a caller that checks before deciding what to run)."""
    least = None
    for til in _candidates(spec, cfg, tokens):
        regions, sizes = _layout(til, cfg, 0)
        end = _align(regions.output + sizes["output"])
        if end <= cfg.ext_mem_bytes:
            return
        least = end if least is None else min(least, end)
    if least is not None:
        raise UnsupportedError(f"layer {spec.name!r}: its memory regions need {least} bytes at {tokens} "
                               f"token(s), beyond the external memory of {cfg.ext_mem_mib} MiB (ext_mem_mib)",
                               field="ext_mem_mib")


def choose_tiling(spec: LayerSpec, cfg: AcceleratorConfig, tokens: int) -> Tiling:
    """The candidate (mode x weight-block size) with the fewest Timeline cycles; cached per shape."""
    key = (cfg, spec.d_in, spec.d_out, tokens, spec.w_bits)  # the whole config: programs embed its name and clock
    if key in _TILING_CACHE:
        return _TILING_CACHE[key]
    best, best_cycles, least_bytes = None, None, None
    for til in _candidates(spec, cfg, tokens):
        regions, sizes = _layout(til, cfg, 0)
        end = _align(regions.output + sizes["output"])
        if end > cfg.ext_mem_bytes:   # cannot be placed at all (and its addresses may not even encode)
            least_bytes = end if least_bytes is None else min(least_bytes, end)
            continue
        # Judge on at most two token blocks: the schedule repeats per token block.
        gpb = til.groups_per_block
        groups = range(min(til.ngroups, 2 * gpb))
        parts = _split_programs(spec, cfg, til, regions, groups, range(til.NT))
        cycles = sum(p[2].cycles for p in parts)
        blocks = -(-til.ngroups // gpb)
        if cfg.dma_slots > 1 and blocks > 2:
            # With a DMA queue the first block's transfers all go out at once, so two blocks understate a long
            # prompt's steady state: add the second block's cost for each block beyond them.
            first = sum(p[2].cycles for p in _split_programs(spec, cfg, til, regions, range(gpb), range(til.NT)))
            cycles += (blocks - 2) * (cycles - first)
        if best_cycles is None or cycles < best_cycles:
            best, best_cycles = til, cycles
    if best is None and least_bytes is not None:
        raise UnsupportedError(f"layer {spec.name!r}: its memory regions need {least_bytes} bytes at {tokens} "
                               f"token(s), beyond the external memory of {cfg.ext_mem_mib} MiB (ext_mem_mib)",
                               field="ext_mem_mib")
    _TILING_CACHE[key] = best
    return best


# ---- compiled objects ----------------------------------------------------------------------------

@dataclass
class CompiledLinear:
    """One binarized linear: its program(s), its memory regions and its manifest entry."""
    name: str
    spec: LayerSpec
    tiling: Tiling
    regions: Regions
    sizes: dict[str, int]
    programs: list[Schedule]
    parts: list[tuple[range, range]]
    config: AcceleratorConfig
    base: int = 0
    memory: bytearray | None = None   # bytes [base, end) of this layer's regions (None: timing-only)

    @property
    def words(self) -> list[int]:
        """The instruction words (of the only program; see ``programs`` when split)."""
        if len(self.programs) != 1:
            raise ValueError(f"layer {self.name!r} was split into {len(self.programs)} programs; use .programs")
        return self.programs[0].words

    @property
    def cycles(self) -> int:
        return sum(p.cycles for p in self.programs)

    @property
    def end(self) -> int:
        return _align(self.regions.output + self.sizes["output"])

    def program_files(self) -> list[str]:
        if len(self.programs) == 1:
            return [f"{self.name}.bmprog"]
        return [f"{self.name}.p{i}.bmprog" for i in range(len(self.programs))]

    def listing(self) -> str:
        out = []
        for i, p in enumerate(self.programs):
            (g, t) = self.parts[i]
            out.append(f"; {self.name} part {i}: groups {g.start}..{g.stop - 1}, tiles {t.start}..{t.stop - 1}, "
                       f"{p.cycles} cycles ({p.stall_cycles} stalled)\n")
            out.append(disassemble(p.words, p.comments))
        return "".join(out)

    def program_objects(self) -> list[Program]:
        return [Program(p.words, self.config, {"layer": self.name, "part": i,
                                               "comments": {str(k): v for k, v in p.comments.items()}})
                for i, p in enumerate(self.programs)]

    @property
    def manifest(self) -> dict[str, Any]:
        cfg, til, s = self.config, self.tiling, self.spec
        E = cfg.experts
        regs = {"K": til.K, "OSHIFT": s.oshift}
        if E >= 2:
            regs.update(RSHIFT=s.rshift, ROUTER=til.router_line)
        if E >= 1:
            regs["SIN"] = til.sin_line
        else:
            regs["SMUL"] = s.smul
        if s.w_bits:
            regs["WBITS"] = s.w_bits
        if s.bias:
            regs["BIAS"] = 1
        r = self.regions
        return {
            "name": self.name, "d_in": s.d_in, "d_out": s.d_out, "tokens": til.T, "mode": til.mode,
            "layer_experts": s.layer_experts, "expert_mapping": s.expert_mapping,
            "registers": regs,
            "programs": [{"file": f, "words": len(p.words), "cycles": p.cycles, "stall_cycles": p.stall_cycles,
                          "compute_cycles": p.compute_cycles, "dma_busy_cycles": p.dma_busy_cycles,
                          "groups": [g.start, g.stop], "tiles": [t.start, t.stop], "counts": p.counts}
                         for f, p, (g, t) in zip(self.program_files(), self.programs, self.parts)],
            "cycles": self.cycles,
            "tiling": til.to_dict(),
            "regions": {
                "weights": {"addr": r.weights, "bytes": self.sizes["weights"],
                            "layout": "WBUF lines, tile-major, then chunk, then weight plane: line "
                                      "(n*nch + c)*planes + p holds plane p of output tile n, input chunk c "
                                      "(planes = 1 for sign weights, WBITS for integer weights)"},
                "sbuf": {"addr": r.sbuf, "bytes": self.sizes["sbuf"],
                         "layout": "SBUF lines: router (XL lines, E>=2), S_in (XL lines), S_out (one line per tile)"},
                "input": {"addr": r.input, "bytes": self.sizes["input"], "layout": "xbuf", "dtype": "int16",
                          "tokens": til.T, "K": til.K, "lines_per_token": til.XL, "values_per_line": cfg.cols},
                "output": {"addr": r.output, "bytes": self.sizes["output"],
                           "layout": "obuf_token" if til.mode == "token" else "obuf_plane", "dtype": "int32",
                           "tokens": til.T, "N": til.N, "group": til.g, "groups": til.ngroups,
                           "rows": cfg.rows, "tiles": til.NT, "values_per_line": cfg.cols},
            },
        }


def _pack_layer(spec: LayerSpec, til: Tiling, cfg: AcceleratorConfig, regions: Regions, base: int,
                end: int) -> bytearray:
    """The bytes [base, end) of a layer: packed weights and SBUF lines (input/output regions zero)."""
    mem = bytearray(end - base)
    C, L, E = cfg.cols, cfg.lanes, cfg.experts
    K, N, NT, nch, XL = til.K, til.N, til.NT, til.nch, til.XL
    nwp = til.wlines // nch
    weights = np.zeros((NT * C, nch * L), dtype=np.int64)   # padded outputs: 0 bits; padded inputs: masked
    weights[:N, :K] = spec.weights
    if spec.w_bits:   # bit p of the two's complement integer
        planes = (np.bitwise_and(weights, (1 << spec.w_bits) - 1)[None] >> np.arange(nwp)[:, None, None]) & 1
    else:             # sign weights: 1 = +1 (padding is 0, masked off by the hardware)
        planes = (weights > 0)[None]
    w = planes.astype(bool).reshape(nwp, NT, C, nch, L).transpose(1, 3, 0, 2, 4)   # (tile, chunk, plane, col, lane)
    wbytes = np.packbits(w, axis=-1, bitorder="little").tobytes()
    mem[regions.weights - base: regions.weights - base + len(wbytes)] = wbytes
    if E >= 1:
        def lines(t: np.ndarray, nlines: int) -> bytes:          # [E, n] -> nlines SBUF lines
            pad = np.zeros((E, nlines * C), dtype="<i2")
            pad[:, :t.shape[1]] = t
            return pad.reshape(E, nlines, C).transpose(1, 0, 2).tobytes()
        blob = b""
        if E >= 2:
            blob += lines(spec.router, XL)
        blob += lines(spec.s_in, XL) + lines(spec.s_out, NT)
        assert len(blob) == region_sizes(til, cfg)["sbuf"]
        mem[regions.sbuf - base: regions.sbuf - base + len(blob)] = blob
    return mem


_SCHEDULE_CACHE: dict[tuple, tuple[Tiling, list]] = {}


_LAYER = "<layer>"   # placeholder for the layer name in cached listing comments


def _relocate(sch: Schedule, units: int, name: str) -> Schedule:
    """The same schedule with every region moved up by ``units`` * 64 bytes (patches setr EBASE) and the
    listing comments naming layer ``name``."""
    comments = {pc: c.replace(_LAYER, name) for pc, c in sch.comments.items()}
    words = list(sch.words)
    for i, w in enumerate(words):
        if w >> 58 == Op.SETR and (w >> 52) & 0x3F == Reg.EBASE:
            value = (w & 0xFFFFFFFF) + units
            words[i] = encode(setr(Reg.EBASE, value))
            if comments.get(i, "").startswith("external window at "):
                comments[i] = f"external window at {value * 64:#x}"
    return Schedule(words, comments, sch.cycles, sch.stall_cycles, sch.compute_cycles, sch.dma_busy_cycles,
                    sch.counts)


def compile_spec(spec: LayerSpec, cfg: AcceleratorConfig, tokens: int, *, base: int = 0) -> CompiledLinear:
    """Compile a lowered layer; identical shapes reuse one schedule, relocated to this layer's regions."""
    base = _align(base)
    key = (cfg, spec.d_in, spec.d_out, tokens, spec.rshift, spec.oshift, spec.smul, spec.w_bits, spec.bias)
    cached = _SCHEDULE_CACHE.get(key)
    til = cached[0] if cached else choose_tiling(spec, cfg, tokens)
    regions, sizes = _layout(til, cfg, base)
    end = _align(regions.output + sizes["output"])
    # checked before any program is built: a region past the external memory would also overflow the
    # EBASE field (or take hours to schedule) instead of failing with this message
    if end > cfg.ext_mem_bytes:
        raise UnsupportedError(f"layer {spec.name!r}: its memory regions end at byte {end}, beyond the "
                               f"external memory of {cfg.ext_mem_mib} MiB (ext_mem_mib)", field="ext_mem_mib")
    if cached is None:
        regions0, _ = _layout(til, cfg, 0)
        if len(_SCHEDULE_CACHE) > 64:
            _SCHEDULE_CACHE.clear()
        cached = _SCHEDULE_CACHE[key] = (til, _split_programs(spec, cfg, til, regions0, range(til.ngroups),
                                                              range(til.NT), label=_LAYER))
    til, parts0 = cached
    parts = [(g, t, _relocate(sch, base // ALIGN, spec.name)) for g, t, sch in parts0]
    cl = CompiledLinear(spec.name, spec, til, regions, sizes, [p[2] for p in parts], [(p[0], p[1]) for p in parts],
                        cfg, base)
    if spec.materialized:
        cl.memory = _pack_layer(spec, til, cfg, regions, base, cl.end)
    return cl


def compile_linear(lin: BinaryLinearExport, cfg: AcceleratorConfig, tokens: int, *, base: int = 0) -> CompiledLinear:
    """Compile one exported binarized linear for ``tokens`` tokens; regions start at byte ``base``."""
    lin.validate()
    return compile_spec(lower_linear(lin, cfg), cfg, tokens, base=base)


# ---- host I/O -------------------------------------------------------------------------------------

def _buffer(memory) -> bytearray:
    data = getattr(memory, "data", memory)
    if isinstance(data, CompiledModel):
        data = data.memory
    if not isinstance(data, (bytearray, memoryview)):
        raise TypeError(f"memory must be a bytearray or MemoryImage, got {type(memory).__name__}")
    return data


def _layer_manifest(m) -> dict:
    return m.manifest if isinstance(m, CompiledLinear) else m


def write_layer_input(memory, layer_manifest, x_int16: np.ndarray) -> None:
    """Write x (int16 [T, K]) into the layer's input region in XBUF line layout (zero padded)."""
    man = _layer_manifest(layer_manifest)
    reg = man["regions"]["input"]
    T, K = reg["tokens"], reg["K"]
    x = np.asarray(x_int16)
    if x.shape != (T, K):
        raise ValueError(f"layer {man['name']!r}: x must be [{T}, {K}], got {tuple(x.shape)}")
    if x.dtype != np.int16:
        if x.min(initial=0) < -32768 or x.max(initial=0) > 32767:
            raise ValueError(f"layer {man['name']!r}: x values do not fit int16")
    width = reg["lines_per_token"] * reg["values_per_line"]
    pad = np.zeros((T, width), dtype="<i2")
    pad[:, :K] = x
    buf = _buffer(memory)
    buf[reg["addr"]: reg["addr"] + reg["bytes"]] = pad.tobytes()


def read_layer_output(memory, layer_manifest) -> np.ndarray:
    """The layer's outputs y (int32 [T, N], out_frac_bits fraction bits) from its output region."""
    man = _layer_manifest(layer_manifest)
    reg = man["regions"]["output"]
    buf = _buffer(memory)
    raw = np.frombuffer(bytes(buf[reg["addr"]: reg["addr"] + reg["bytes"]]), dtype="<i4")
    T, N, C, NT = reg["tokens"], reg["N"], reg["values_per_line"], reg["tiles"]
    if reg["layout"] == "obuf_plane":
        return raw.reshape(NT * C)[:N].reshape(1, N).astype(np.int32)
    R, G, g = reg["rows"], reg["groups"], reg["group"]
    arr = raw.reshape(G, NT, R, C).transpose(0, 2, 1, 3)[:, :g].reshape(G * g, NT * C)
    return np.ascontiguousarray(arr[:T, :N]).astype(np.int32)


# ---- whole models -----------------------------------------------------------------------------------

@dataclass
class CompiledModel:
    config: AcceleratorConfig
    layers: list[CompiledLinear]
    memory: bytearray | None
    info: dict[str, Any] = field(default_factory=dict)

    def layer(self, name: str) -> CompiledLinear:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(f"no compiled layer {name!r}")

    @property
    def cycles(self) -> int:
        return sum(l.cycles for l in self.layers)

    @property
    def manifest(self) -> dict[str, Any]:
        return {"version": MANIFEST_VERSION, "config": self.config.to_dict(),
                "config_fingerprint": self.config.fingerprint(),
                "memory_image": None if self.memory is None else "memory.bmmem",
                "memory_bytes": self.layers[-1].end if self.layers else 0,
                "timing_only": self.memory is None, "tokens": self.info.get("tokens"),
                "cycles": self.cycles, "info": self.info,
                "layers": [l.manifest for l in self.layers]}

    def memory_image(self) -> MemoryImage:
        if self.memory is None:
            raise UnsupportedError("timing-only compile: there is no memory image")
        return MemoryImage(self.memory, self.config.fingerprint(),
                           {"layers": [l.name for l in self.layers], "tokens": self.info.get("tokens")})

    def save(self, out_dir: str | Path, *, listings: bool = True) -> Path:
        """Write the programs, listings, memory image and manifest as one whole folder (fileio.atomic_folder):
        a failure midway leaves an existing ``out_dir`` exactly as it was. The manifest records the SHA-256
        of every file it names and of itself; ``bitmos simulate`` checks them all."""
        out = Path(out_dir)
        man = self.manifest
        with atomic_folder(out, marker="manifest.json") as tmp:
            for l, lman in zip(self.layers, man["layers"]):
                check_safe_name(l.name, "layer name")
                for entry, prog in zip(lman["programs"], l.program_objects()):
                    entry["sha256"] = _write_hashed(tmp / check_safe_name(entry["file"], "program file"),
                                                    prog.to_bytes())
                if listings:
                    write_text_atomic(tmp / f"{l.name}.lst", l.listing())
            if self.memory is not None:
                man["memory_sha256"] = _write_hashed(tmp / "memory.bmmem", self.memory_image().to_bytes())
            man["manifest_sha256"] = manifest_digest(man)
            write_json_atomic(tmp / "manifest.json", man)
        return out


def _write_hashed(path: Path, data: bytes) -> str:
    write_bytes_atomic(path, data)
    return sha256_hex(data)


def load_model_input(source) -> tuple[str, Any]:
    """('export', ModelExport) or ('shape', dict) from a ModelExport, an export file, or anything
    :func:`bitmos.compiler.shapes.load_shape` reads (a shape name, a config dict or a JSON file)."""
    if isinstance(source, ModelExport):
        return "export", source
    if isinstance(source, (dict, str, Path)) and (isinstance(source, dict) or is_shape_source(source)):
        return "shape", load_shape(source)
    p = Path(source)
    if not p.is_file():
        raise FormatError(f"model file {str(p)!r} {why_not_a_file(p)}")
    return "export", ModelExport.load(p)


def _check_model_fits(walk: list[tuple[str, int, int]], cfg: AcceleratorConfig, tokens: int) -> None:
    """Refuse, before compiling anything, a model whose layers together need more external memory than the
    config has (each distinct shape is tiled once; its regions are the same wherever it is placed)."""
    need, per_shape = 0, {}
    for name, d_in, d_out in walk:
        if (d_in, d_out) not in per_shape:
            til = choose_tiling(synthetic_spec(name, d_in, d_out, cfg, seed=0, materialize=False), cfg, tokens)
            regions, sizes = _layout(til, cfg, 0)
            per_shape[(d_in, d_out)] = _align(regions.output + sizes["output"])
        need += per_shape[(d_in, d_out)]
    if need > cfg.ext_mem_bytes:
        raise UnsupportedError(f"the model's {len(walk)} binarized linears need {need / 2**20:,.0f} MiB of external "
                               f"memory at {tokens} token(s); config {cfg.name!r} has {cfg.ext_mem_mib} MiB "
                               "(ext_mem_mib)", field="ext_mem_mib")


def compile_model(export_or_shape, cfg: AcceleratorConfig, tokens: int, *, timing_only: bool | None = None,
                  seed: int = 0) -> CompiledModel:
    """Compile every binarized linear of a model for ``tokens`` tokens.

    ``export_or_shape``: a ModelExport, an export file path, a HF/bitmos config dict or JSON path. Shape-only
    inputs get seeded synthetic weights; ``timing_only`` (default: automatic for shape-only models whose
    image would exceed 256 MiB; always False for exports) skips materializing weights and the image.
    """
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ConfigError(f"tokens must be a positive integer, got {tokens!r}")
    t0 = time.perf_counter()
    kind, obj = load_model_input(export_or_shape)
    if kind == "export":
        if timing_only:
            specs_src = [(lin, False) for lin in obj.linears]
        else:
            specs_src = [(lin, True) for lin in obj.linears]
        if not specs_src:
            raise UnsupportedError("the export has no binarized linears (a float teacher?)")
        make = [lambda lin=lin, mat=mat: lower_linear(lin, cfg, materialize=mat) for lin, mat in specs_src]
        names = [lin.name for lin, _ in specs_src]
        model_info = {"source": "export", "model_config": obj.model_config}
        timing = bool(timing_only)
    else:
        walk = llama_linears(obj)
        _check_model_fits(walk, cfg, tokens)
        if timing_only is None:
            est = sum(ceil_div(dout, cfg.cols) * cfg.cols * cfg.nchunks(din) * cfg.lanes // 8 for _, din, dout in walk)
            timing = est > AUTO_TIMING_ONLY_BYTES
        else:
            timing = bool(timing_only)
        make = [lambda n=n, a=a, b=b, i=i: synthetic_spec(n, a, b, cfg, seed=seed + i, materialize=not timing)
                for i, (n, a, b) in enumerate(walk)]
        names = [n for n, _, _ in walk]
        model_info = {"source": "shape", "model_config": obj, "seed": seed}
    layers: list[CompiledLinear] = []
    base = 0
    for mk in make:
        spec = mk()
        cl = compile_spec(spec, cfg, tokens, base=base)
        layers.append(cl)
        base = cl.end
    memory = None
    if not timing:
        memory = bytearray(base)
        for cl in layers:
            memory[cl.base: cl.base + len(cl.memory)] = cl.memory
            cl.memory = None  # the model image holds the bytes now
    info = dict(model_info, tokens=tokens, layers=len(names), compile_seconds=round(time.perf_counter() - t0, 3))
    return CompiledModel(cfg, layers, memory, info)
