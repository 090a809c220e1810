"""AcceleratorConfig: the one description of the accelerator that every implementation reads.

The compiler tiles for it, the simulator times it, the RTL is generated from it and the golden model
takes its number formats from it. It is frozen, validated on creation (errors name the field, the value
and the allowed range), loadable from TOML or JSON, and has named presets in ``bitmos/presets/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from bitmos.errors import ConfigError
from bitmos.fileio import read_text_file

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

#: Largest depth of any on-chip buffer: line addresses are 16-bit instruction fields.
MAX_BUFFER_LINES = 1 << 16

#: Fields that name or report on a machine without changing what it computes or how many cycles it takes.
REPORTING_FIELDS = ("name", "clock_mhz")

#: Units added after contract v2, each absent (0) unless a config sets it: a config file written before one existed
#: is still whole without it, and a machine without it keeps the fingerprint it had (programs and images made for
#: it still load). A field's line is never the last of a written config (``to_toml`` puts it mid-file), so a file
#: cut off early still lacks later fields.
LATER_UNITS = ("vector_unit", "attn_rows", "dma_queue")


@dataclass(frozen=True)
class AcceleratorConfig:
    """Parameters of one accelerator instance (see docs/architecture.md for what each block does)."""

    name: str = "custom"
    # -- the array -------------------------------------------------------------------------------
    rows: int = 4            # R: PE rows; a row holds one token (token mode) or activation planes (plane mode)
    cols: int = 4            # C: PE columns; a column holds one output channel; also the scale unit's lane count
    lanes: int = 32          # L: binary lanes per PE per cycle (XNOR/AND + popcount width); multiple of 8 and of cols
    act_bits: int = 8        # k: activation bits, fed bit-serially as planes (1 = fully binary)
    weight_bits: int = 1     # widest integer weight the PE takes (1 = sign weights only; 2 = ternary; up to 8)
    acc_bits: int = 24       # PE accumulator width; the compiler refuses layers that could overflow it
    experts: int = 4         # E: scale experts (0 = plain sign + one per-layer scale, 1 = one scale set, 4 = BinaryMoS)
    vector_unit: int = 0     # 1 = the layer's vector unit (residual add, SwiGLU, norms, rotary; docs/isa.md): simulated only
    attn_rows: int = 0       # query rows the vector unit's attention passes serve per WBUF line read (0 = 1)
    # -- on-chip buffers (KiB each; depth in lines is derived from the line widths) ------------------
    xbuf_kib: int = 8        # layer inputs, int16, cols values per line
    wbuf_kib: int = 16       # packed sign bits, cols*lanes bits per line (double-buffered by the compiler)
    sbuf_kib: int = 8        # router weights and scale experts, int16, max(E,1)*cols values per line
    qbuf_kib: int = 4        # quantized activation planes, rows*lanes bits per line
    obuf_kib: int = 8        # accumulators / outputs, int32, cols values per line
    meta_tokens: int = 64    # per-token records (dequantization factor D and E gates) the scale unit keeps
    imem_words: int = 4096   # instruction memory, 64-bit words, loaded by the host before start
    # -- external memory ---------------------------------------------------------------------------
    ext_bw_bits: int = 64    # external memory bandwidth, bits per cycle
    ext_latency: int = 20    # cycles from a DMA request to its first beat
    dma_queue: int = 0       # transfers the DMA engine keeps in flight, their latencies overlapped (0 = 1): simulated only
    ext_mem_mib: int = 64    # size of the external address space the DMA may touch
    # -- number formats ----------------------------------------------------------------------------
    x_frac_bits: int = 8     # layer inputs are int16 with this many fraction bits (Q7.8 by default)
    out_frac_bits: int = 16  # layer outputs are int32 with this many fraction bits (Q15.16 by default)
    # -- reporting only ----------------------------------------------------------------------------
    clock_mhz: float = 200.0

    def __post_init__(self) -> None:
        _validate(self)

    # ---- derived quantities (one definition; every implementation uses these) -------------------
    @property
    def act_qmax(self) -> int:
        """Q: the largest activation magnitude (k >= 2: 2^(k-1)-1, symmetric; k = 1: +-1)."""
        return 1 if self.act_bits == 1 else (1 << (self.act_bits - 1)) - 1

    @property
    def xbuf_line_bits(self) -> int:
        return self.cols * 16

    @property
    def wbuf_line_bits(self) -> int:
        return self.cols * self.lanes

    @property
    def sbuf_line_bits(self) -> int:
        return max(self.experts, 1) * self.cols * 16

    @property
    def qbuf_line_bits(self) -> int:
        return self.rows * self.lanes

    @property
    def obuf_line_bits(self) -> int:
        return self.cols * 32

    @property
    def meta_bits(self) -> int:
        """One per-token record: D (32 bits), E gates (16 bits each) and, with a router (E >= 2), the
        token's bias (32 bits: register BIAS, FBI-LLM's beta . x)."""
        return 32 + 16 * self.experts + (32 if self.experts >= 2 else 0)

    def line_bits(self, buffer: str) -> int:
        return {"X": self.xbuf_line_bits, "W": self.wbuf_line_bits, "S": self.sbuf_line_bits,
                "Q": self.qbuf_line_bits, "O": self.obuf_line_bits}[buffer]

    def depth(self, buffer: str) -> int:
        """Lines in buffer 'X', 'W', 'S', 'Q' or 'O'."""
        kib = {"X": self.xbuf_kib, "W": self.wbuf_kib, "S": self.sbuf_kib, "Q": self.qbuf_kib,
               "O": self.obuf_kib}[buffer]
        return kib * 8192 // self.line_bits(buffer)

    @property
    def ext_mem_bytes(self) -> int:
        return self.ext_mem_mib << 20

    @property
    def plane_rows(self) -> int:
        """Rows used in plane mode (decode): one activation plane per row."""
        return min(self.act_bits, self.rows)

    @property
    def dma_slots(self) -> int:
        """Transfers the DMA engine keeps in flight (``dma_queue``; 0 means one at a time, the v2 engine)."""
        return max(1, self.dma_queue)

    @property
    def planes_per_row(self) -> int:
        """P: activation planes each row handles serially in plane mode."""
        return math.ceil(self.act_bits / self.rows)

    def nchunks(self, k_features: int) -> int:
        """K-chunks of ``lanes`` inputs that a length-K dot product takes."""
        return math.ceil(k_features / self.lanes)

    def xlines(self, k_features: int) -> int:
        """XBUF lines one token's input of length K occupies (padded to whole chunks)."""
        return self.nchunks(k_features) * (self.lanes // self.cols)

    def binary_ops_per_cycle(self) -> int:
        """Peak binary operations per cycle: one AND/XNOR + one popcount-add per lane (2 ops)."""
        return 2 * self.rows * self.cols * self.lanes

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "AcceleratorConfig":
        """Build from a mapping; ``preset = "name"`` starts from a preset; unknown keys are errors."""
        data = dict(data)
        if "accelerator" in data and isinstance(data["accelerator"], dict):
            extra = set(data) - {"accelerator"}
            if extra:
                raise ConfigError(f"{source}: unknown top-level key(s) {sorted(extra)}; "
                                  "put accelerator fields in the [accelerator] table")
            data = dict(data["accelerator"])
        base: dict[str, Any] = {}
        if "preset" in data:
            preset = data.pop("preset")
            base = preset_config(preset).to_dict()
        known = {f.name: f for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown field {key!r}; known fields: {', '.join(known)}")
            want = known[key].type
            if want == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{source}: field {key!r} must be an integer, got {value!r}")
            if want == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{source}: field {key!r} must be a number, got {value!r}")
            if want == "str" and not isinstance(value, str):
                raise ConfigError(f"{source}: field {key!r} must be a string, got {value!r}")
            base[key] = float(value) if want == "float" else value
        return cls(**base)

    @classmethod
    def load(cls, path: str | Path) -> "AcceleratorConfig":
        """Load a ``.toml`` or ``.json`` file, or a preset name such as ``small``."""
        p = Path(path)
        if not p.exists():
            if str(path) in PRESETS:
                return preset_config(str(path))
            raise ConfigError(f"config file {str(path)!r} does not exist "
                              f"(and is not a preset; presets: {', '.join(PRESETS)})")
        text = read_text_file(p, "config file", error=ConfigError)
        try:
            if p.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                data = tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{p}: cannot parse: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a table of fields, got {type(data).__name__}")
        fields_given = data.get("accelerator") if isinstance(data.get("accelerator"), dict) else data
        if not fields_given:
            # an empty (or truncated to nothing) file must not silently become the default config
            raise ConfigError(f"{p}: the config sets no fields (empty or truncated file?); give fields or "
                              "'preset = \"NAME\"'")
        toml = p.suffix.lower() != ".json"
        if toml:
            _check_not_cut_in_a_number(p, text)
        cfg = cls.from_dict(data, source=str(p))
        _check_whole(p, fields_given, toml)
        return cfg

    def to_toml(self) -> str:
        lines = ["[accelerator]"]
        for f in fields(self):
            v = getattr(self, f.name)
            lines.append(f"{f.name} = {json.dumps(v)}")
        return "\n".join(lines) + "\n"

    def fingerprint(self) -> str:
        """A short hash of the fields that change the machine (not :data:`REPORTING_FIELDS`): programs and
        memory images record it to catch mismatches, so two descriptions of one machine share it."""
        machine = {k: v for k, v in self.to_dict().items()
                   if k not in REPORTING_FIELDS and not (k in LATER_UNITS and v == 0)}
        blob = json.dumps(machine, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ---- a config file cut off is an error, not a shorter config --------------------------------------------
#
# A config file names every field (what `bitmos config NAME` prints), or names a preset to take the fields it
# does not set from. In TOML the preset line comes last. Then every truncation of a config file is refused:
# a JSON document cut short does not parse; a TOML file cut at a line end lacks fields (a whole config) or its
# preset line (a partial one); cut inside a line it does not parse, or its last line is a number without a
# line end (``rows = 1`` of ``rows = 16``), which is refused too.

def _check_not_cut_in_a_number(p: Path, text: str) -> None:
    if text.endswith("\n"):
        return
    last = text.rsplit("\n", 1)[-1].split("#", 1)[0].strip()
    if last and last[-1] in "0123456789.":
        raise ConfigError(f"{p}: the last line {last!r} has no line end, so the file may be cut off inside that "
                          "number; end the file with a newline")


def _check_whole(p: Path, given: dict[str, Any], toml: bool) -> None:
    names = [f.name for f in fields(AcceleratorConfig) if f.name not in LATER_UNITS or f.name in given]
    if "preset" not in given:
        missing = [n for n in names if n not in given]
        if missing:
            shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            raise ConfigError(f"{p}: sets {len(names) - len(missing)} of the {len(names)} fields and names no "
                              f"preset, so it may be cut off (missing {shown}); name every field (`bitmos config "
                              "small` prints a whole config) or take the others from a preset with "
                              "preset = \"NAME\" as the last line")
    elif toml and list(given)[-1] != "preset":
        raise ConfigError(f"{p}: preset = {given['preset']!r} must be the last line of the config, after the "
                          "fields it overrides, so that a file cut off early is not read as the preset with "
                          "fewer overrides")


def _check_range(name: str, value: Any, lo: float, hi: float) -> None:
    if not (lo <= value <= hi):
        raise ConfigError(f"field {name!r} = {value!r} is out of range; allowed {lo}..{hi}", field=name)


def _validate(c: AcceleratorConfig) -> None:
    for f in fields(c):
        v = getattr(c, f.name)
        if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConfigError(f"field {f.name!r} must be an integer, got {v!r}", field=f.name)
    _check_range("rows", c.rows, 1, 64)
    _check_range("vector_unit", c.vector_unit, 0, 1)
    _check_range("attn_rows", c.attn_rows, 0, 64)
    if c.attn_rows >= 2 and not c.vector_unit:
        raise ConfigError(f"field 'attn_rows' = {c.attn_rows} sizes the vector unit's attention; it needs "
                          "vector_unit = 1", field="attn_rows")
    _check_range("cols", c.cols, 1, 64)
    _check_range("lanes", c.lanes, 8, 1024)
    if c.lanes % 8:
        raise ConfigError(f"field 'lanes' = {c.lanes} must be a multiple of 8 (weights are packed in bytes)",
                          field="lanes")
    if c.lanes % c.cols:
        raise ConfigError(f"field 'lanes' = {c.lanes} must be a multiple of 'cols' = {c.cols}: the scale "
                          "unit assembles one lanes-wide plane word from lanes/cols cycles of cols values",
                          field="lanes")
    if c.act_bits not in (1, 2, 4, 8):
        raise ConfigError(f"field 'act_bits' = {c.act_bits!r} is not supported; allowed 1, 2, 4, 8",
                          field="act_bits")
    _check_range("weight_bits", c.weight_bits, 1, 8)
    if c.weight_bits >= 2 and c.act_bits == 1:
        # k = 1 activations are +-1 (XNOR form): an integer weight plane would need a per-column term
        # popcount(w & mask) beside the popcount the PE has; no 1-bit LLM pairs such weights with them
        raise ConfigError(f"field 'weight_bits' = {c.weight_bits} needs act_bits >= 2 (integer weight planes "
                          "use the AND form); set weight_bits = 1 for act_bits = 1", field="weight_bits")
    _check_range("acc_bits", c.acc_bits, 16, 32)
    _check_range("experts", c.experts, 0, 8)
    for buf in ("xbuf", "wbuf", "sbuf", "qbuf", "obuf"):
        _check_range(f"{buf}_kib", getattr(c, f"{buf}_kib"), 1, 1 << 16)
        letter = buf[0].upper()
        depth = c.depth(letter)
        if not (2 <= depth <= MAX_BUFFER_LINES):
            raise ConfigError(f"field '{buf}_kib' = {getattr(c, f'{buf}_kib')} gives {depth} lines of "
                              f"{c.line_bits(letter)} bits; allowed 2..{MAX_BUFFER_LINES} lines",
                              field=f"{buf}_kib")
    _check_range("meta_tokens", c.meta_tokens, 1, 1024)
    if c.meta_tokens < c.rows:
        raise ConfigError(f"field 'meta_tokens' = {c.meta_tokens} must be at least 'rows' = {c.rows}",
                          field="meta_tokens")
    _check_range("imem_words", c.imem_words, 16, 1 << 20)
    _check_range("ext_bw_bits", c.ext_bw_bits, 8, 8192)
    if c.ext_bw_bits % 8:
        raise ConfigError(f"field 'ext_bw_bits' = {c.ext_bw_bits} must be a multiple of 8", field="ext_bw_bits")
    _check_range("ext_latency", c.ext_latency, 0, 10000)
    _check_range("dma_queue", c.dma_queue, 0, 64)
    _check_range("ext_mem_mib", c.ext_mem_mib, 1, 1 << 18)
    _check_range("x_frac_bits", c.x_frac_bits, 0, 15)
    _check_range("out_frac_bits", c.out_frac_bits, 0, 31)
    if isinstance(c.clock_mhz, bool) or not isinstance(c.clock_mhz, (int, float)):
        raise ConfigError(f"field 'clock_mhz' must be a number, got {c.clock_mhz!r}", field="clock_mhz")
    _check_range("clock_mhz", c.clock_mhz, 1e-3, 1e5)


def _preset_names() -> tuple[str, ...]:
    files = resources.files("bitmos.presets")
    return tuple(sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml")))


PRESETS: tuple[str, ...] = _preset_names()


def preset_config(name: str) -> AcceleratorConfig:
    """The named preset from ``bitmos/presets/NAME.toml``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    text = resources.files("bitmos.presets").joinpath(f"{name}.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    acc = data.get("accelerator", data)
    if "preset" in acc:
        raise ConfigError(f"preset {name!r} must not itself name a preset")
    cfg = AcceleratorConfig.from_dict(data, source=f"preset {name}")
    _check_whole(Path(f"preset {name}"), acc, toml=True)   # a shipped preset is a whole config too
    return cfg


def presets_where(check) -> list[str]:
    """The presets ``p`` for which ``check(preset_config(p))`` raises no UnsupportedError (a compiler refusal):
    the one loop behind every "the presets that hold this model" hint."""
    from bitmos.errors import UnsupportedError

    out = []
    for name in PRESETS:
        try:
            check(preset_config(name))
        except UnsupportedError:
            continue
        out.append(name)
    return out
