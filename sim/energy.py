"""Energy model: exact per-action counts of a run times a per-action energy table, plus leakage.

Counting rules (docs/energy.md has the full list and the sources of every table entry):

* ``lane_ops``: XNOR/AND-popcount lane operations = lanes x active PEs, summed over array steps.
  Token mode: every step of a tile drives all R x C PEs (nch*k steps). Plane mode: only the rows
  holding a valid plane (k of the P*Ra (plane, row) pairs per chunk) are active.
* One lane op is **2 binary operations** (the AND/XNOR and its popcount-accumulate), the same
  definition as :meth:`AcceleratorConfig.binary_ops_per_cycle`; ``binary_ops = 2 * lane_ops``.
* ``useful_lane_ops``: lane ops on lanes i < K and, in token mode, on rows holding one of the
  tokens of the latest ``quant`` (its ntok); the basis of array utilization.
* ``acc_adds``: one accumulator add per active PE per step; ``reduce_adds``: plane mode's drain adds
  (Ra - 1 per column per tile).
* Scale unit, per token of ``quant``: ``router_macs`` = XL*C*E (E >= 2), ``mix_macs`` = XL*C*E (E >= 1),
  ``scale_muls`` = XL*C (v = x * s_in, E >= 1), ``quant_muls`` = nch*L (v * RQ, k >= 2),
  ``softmax_muls`` = 2E, ``softmax_adds`` = E, ``lut_reads`` = E (E >= 2), ``recips`` = [E >= 2] + [k >= 2]
  (softmax RCP, RQ), ``d_muls`` = 1 (m * INVQ). Per (tile, token) of ``scaleout``: ``mix_macs`` += C*E,
  ``out_muls`` += 2C (acc * D * s_out).
* Buffers, in bits: each line read or written counts its full width (QBUF token-mode writes count one
  L-bit slot). ``quant`` reads XL lines of XBUF per pass (two passes when E >= 2) and XL SBUF lines per
  pass; ``matmul`` reads each WBUF line once per tile (held across the k plane steps), each QBUF line
  once per tile and writes R (token) or 1 (plane) OBUF lines per tile; ``scaleout`` reads and writes one
  OBUF line, reads one SBUF line (E >= 1) and one META record per (tile, token). DMA moves
  nlines * B bits between a buffer and external memory.
* ``instructions``: 64-bit IMEM fetches (every issued instruction, the faulting one and the implicit
  nops past the program's end included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bitmos.config import AcceleratorConfig
from bitmos.errors import ConfigError
from bitmos.fileio import read_text_file
from bitmos.isa import BUFFERS, Op, Reg
from bitmos.semantics import Ops, attn_last_tile, attn_positions, attn_row_groups, kv_pass_lines, olines, rope_table_lines, score_lines, weight_planes

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

BUFFER_NAMES = ("X", "W", "S", "Q", "O", "META")

COUNT_KEYS = (
    "instructions", "lane_ops", "useful_lane_ops", "acc_adds", "reduce_adds",
    "router_macs", "mix_macs", "scale_muls", "quant_muls", "out_muls", "d_muls", "softmax_muls",
    "softmax_adds", "lut_reads", "recips", "vector_adds", "vector_mul8s", "vector_mul16s", "vector_mul32s",
    "vector_lut_reads", "vector_recips",
    *(f"{b.lower()}_{rw}_bits" for b in BUFFER_NAMES for rw in ("read", "write")),
    "imem_read_bits", "ext_read_bits", "ext_write_bits",
)


def count_actions(cfg: AcceleratorConfig, dec, n: int, *, nop_tail: int = 0, faulted: bool = False
                  ) -> dict[str, int]:
    """Exact action counts of the first ``n`` instructions of a decoded program (all of which issued).

    ``nop_tail``: implicit nops past the program end that issued; ``faulted``: one more instruction
    was fetched and refused.
    """
    op = dec.op[:n]
    f = {k: v[:n] for k, v in dec.f.items()}
    K = dec.regs[Reg.K][:n]
    C, L, R, E, k = cfg.cols, cfg.lanes, cfg.rows, cfg.experts, cfg.act_bits
    P, Ra = cfg.planes_per_row, cfg.plane_rows
    nch = (K + L - 1) // L
    xl = nch * (L // C)
    c: dict[str, int] = dict.fromkeys(COUNT_KEYS, 0)
    S = lambda a: int(np.sum(a, dtype=np.int64))  # noqa: E731

    fetched = n + nop_tail + (1 if faulted else 0)
    c["instructions"] = fetched
    c["imem_read_bits"] = 64 * fetched

    # DMA
    bits_of = np.array([cfg.line_bits(b) for b in BUFFERS], dtype=np.int64)
    for code, name in ((Op.LOAD, "load"), (Op.STORE, "store")):
        sel = op == int(code)
        if not sel.any():
            continue
        bits = f["nlines"][sel] * bits_of[f["buf"][sel]]
        for bi, b in enumerate(BUFFERS):
            tb = S(bits[f["buf"][sel] == bi])
            if name == "load":
                c[f"{b.lower()}_write_bits"] += tb
            else:
                c[f"{b.lower()}_read_bits"] += tb
        c["ext_read_bits" if name == "load" else "ext_write_bits"] += S(bits)

    # quant
    sel = op == int(Op.QUANT)
    if sel.any():
        ntok, mode, x, ch = f["ntok"][sel], f["mode"][sel], xl[sel], nch[sel]
        passes = 2 if E >= 2 else 1
        c["x_read_bits"] += S(ntok * x) * passes * cfg.xbuf_line_bits
        s_lines = (1 if E >= 2 else 0) + (1 if E >= 1 else 0)
        c["s_read_bits"] += S(ntok * x) * s_lines * cfg.sbuf_line_bits
        if E >= 2:
            c["router_macs"] += S(ntok * x) * C * E
            c["softmax_muls"] += S(ntok) * 2 * E
            c["softmax_adds"] += S(ntok) * E
            c["lut_reads"] += S(ntok) * E
        if E >= 1:
            c["mix_macs"] += S(ntok * x) * C * E
            c["scale_muls"] += S(ntok * x) * C
        if k >= 2:
            c["quant_muls"] += S(ntok * ch) * L
        c["recips"] += S(ntok) * ((1 if E >= 2 else 0) + (1 if k >= 2 else 0))
        c["d_muls"] += S(ntok)
        tok = mode == 0
        c["q_write_bits"] += S(ntok[tok] * ch[tok]) * k * L + S(ch[~tok]) * P * R * L
        c["meta_write_bits"] += S(ntok) * cfg.meta_bits

    # matmul
    sel = op == int(Op.MATMUL)
    if sel.any():
        # every weight plane is a pass over the chunk: steps, WBUF and QBUF reads scale with it
        wp = weight_planes(cfg, dec.regs[Reg.WBITS][:n][sel], Ops(select=np.where))
        nt, mode, ch, kk = f["ntiles"][sel], f["mode"][sel], nch[sel] * wp, K[sel] * wp
        # valid token rows: ntok of the latest quant before each matmul (0 if none)
        is_q = op == int(Op.QUANT)
        lastq = np.maximum.accumulate(np.where(is_q, np.arange(n), -1))[sel]
        rows_valid = np.where(lastq >= 0, f["ntok"][np.maximum(lastq, 0)], 0)
        tok = mode == 0
        steps_tok = S(nt[tok] * ch[tok]) * k
        c["lane_ops"] += steps_tok * R * C * L + S(nt[~tok] * ch[~tok]) * k * C * L
        c["acc_adds"] += steps_tok * R * C + S(nt[~tok] * ch[~tok]) * k * C
        c["reduce_adds"] += S(nt[~tok]) * (Ra - 1) * C
        c["useful_lane_ops"] += (S(nt[tok] * kk[tok] * np.minimum(rows_valid[tok], R)) * k * C
                                 + S(nt[~tok] * kk[~tok]) * k * C)
        c["w_read_bits"] += S(nt * ch) * cfg.wbuf_line_bits
        c["q_read_bits"] += (S(nt[tok] * ch[tok]) * k + S(nt[~tok] * ch[~tok]) * P) * cfg.qbuf_line_bits
        c["o_write_bits"] += (S(nt[tok]) * R + S(nt[~tok])) * cfg.obuf_line_bits

    # the vector unit: every lane of every line it reads works (a token's last line past K included)
    ob_bits, x_bits, s_bits = cfg.obuf_line_bits, cfg.xbuf_line_bits, cfg.sbuf_line_bits
    nl = olines(cfg, K)
    for code in (Op.RESADD, Op.SILU, Op.RMSNORM, Op.LAYERNORM, Op.ROPE):
        sel = op == int(code)
        if not sel.any():
            continue
        lines, xlines = S(f["ntok"][sel] * nl[sel]), S(f["ntok"][sel] * xl[sel])
        if code is Op.RESADD:        # r + y: two lines read, one written, C saturating adds per line
            c["o_read_bits"] += 2 * lines * ob_bits
            c["o_write_bits"] += lines * ob_bits
            c["vector_adds"] += lines * C
        elif code is Op.ROPE:        # in place; the token's cos and sin lines; 2 products and an add per value
            c["o_read_bits"] += lines * ob_bits
            c["o_write_bits"] += lines * ob_bits
            hd = dec.regs[Reg.HDIM][:n][sel]
            c["s_read_bits"] += S(f["ntok"][sel] * rope_table_lines(cfg, hd)) * s_bits
            c["vector_mul32s"] += 2 * lines * C
            c["vector_adds"] += lines * C
        elif code is Op.SILU:        # gate and up read; sigmoid table, g x sigmoid and h x u per value
            c["o_read_bits"] += 2 * lines * ob_bits
            c["x_write_bits"] += xlines * x_bits
            c["vector_lut_reads"] += lines * C
            c["vector_mul32s"] += 2 * lines * C
        else:                        # three passes over r; the max's compares and the square sum's adds,
            mean = code is Op.LAYERNORM                      # the squares, r' x RSQ x G; one divide and one
            c["o_read_bits"] += (4 if mean else 3) * lines * ob_bits     # square root per token; LayerNorm: a
            c["s_read_bits"] += 0 if mean else lines * s_bits            # mean pass (its adds and divide, the
            c["x_write_bits"] += xlines * x_bits                         # centring subtracts), unit gains
            c["vector_adds"] += (4 if mean else 2) * lines * C
            c["vector_mul16s"] += lines * C
            c["vector_mul32s"] += 2 * lines * C
            c["vector_recips"] += (3 if mean else 2) * S(f["ntok"][sel])

    # kvpack: the head's lines read twice (max, quantize); head_dim mantissa bytes and an exponent byte written
    hd_all = dec.regs[Reg.HDIM][:n]
    sel = op == int(Op.KVPACK)
    if sel.any():
        ntok, hd = f["ntok"][sel], hd_all[sel]
        c["o_read_bits"] += S(ntok * 2 * (hd // C)) * ob_bits
        c["w_write_bits"] += S(ntok * (hd + 1)) * 8
        c["vector_adds"] += S(ntok * 2 * hd)                 # the max's compares, the rounding adds
    # attn, per query row (ntok x HGRP) over the m positions of its region or tile (semantics.attn_positions), by
    # part (the passes of semantics.attn_cycles; a pass's WBUF lines once per row group, attn_row_groups)
    sel = op == int(Op.ATTN)
    if sel.any():
        regs = {r: dec.regs[r][:n][sel] for r in (Reg.HDIM, Reg.QPOS, Reg.KVMAX, Reg.TPOS, Reg.HGRP)}
        fs = {"ntok": f["ntok"][sel], "part": f["part"][sel]}
        hd, part = regs[Reg.HDIM], fs["part"]
        npos, m = attn_positions(fs, regs, Ops(select=np.where))
        rows = fs["ntok"] * regs[Reg.HGRP]
        kv = kv_pass_lines(cfg, hd, m) * cfg.wbuf_line_bits                  # one pass over the m positions
        sl, hl = score_lines(cfg, npos), hd // C
        whole, scores, values = part == 0, part == 1, part == 2
        first = values & (regs[Reg.TPOS] == 0)                     # the values part's softmax
        last = values & attn_last_tile(fs, regs)
        softmax = whole | first
        c["o_read_bits"] += S(rows * (2 * hl * (whole | scores)        # q twice
                                      + 2 * sl * whole + 3 * sl * first      # scratch: p, then w (first: max too)
                                      + score_lines(cfg, m) * values + 2 * hl * values)) * ob_bits   # w; acc
        c["o_write_bits"] += S(rows * (2 * sl * whole + score_lines(cfg, m) * scores + 2 * sl * first
                                       + 2 * hl * values)) * ob_bits     # scores, p and w; scores; p, w; acc
        groups = attn_row_groups(cfg, rows)
        c["w_read_bits"] += S(groups * kv * (2 * whole + scores + values))   # the key pass, the value pass
        c["x_write_bits"] += S(rows * hl * (whole | last)) * x_bits
        dots, sums = rows * m * hd * (whole | scores), rows * m * hd * (whole | values)
        c["vector_mul8s"] += S(dots)                                          # q . k
        c["vector_mul32s"] += S(rows * m * (whole | scores) + rows * npos * softmax)   # x ATT_SCALE, p x RCP
        c["vector_mul16s"] += S(sums)                         # w (31 bits) x v mantissa (8): a 16x16's array
        c["vector_adds"] += S(dots + 2 * sums + rows * npos * 2 * softmax)   # dot adds, 64-bit accumulate, max, sum
        c["vector_lut_reads"] += S(rows * npos * softmax)
        c["vector_recips"] += S(rows * softmax)

    # scaleout
    sel = op == int(Op.SCALEOUT)
    if sel.any():
        pairs = S(f["ntiles"][sel] * f["ntok"][sel])
        c["o_read_bits"] += pairs * cfg.obuf_line_bits
        c["o_write_bits"] += pairs * cfg.obuf_line_bits
        c["meta_read_bits"] += pairs * cfg.meta_bits
        c["out_muls"] += pairs * 2 * C
        if E >= 1:
            c["s_read_bits"] += pairs * cfg.sbuf_line_bits
            c["mix_macs"] += pairs * C * E
    return c


# ---- energy tables ------------------------------------------------------------------------------------

#: Required keys of an energy table, per section, with their meaning.
TABLE_SCHEMA: dict[str, dict[str, str]] = {
    "compute": {
        "lane_op_pj": "one XNOR/AND lane plus its share of the popcount tree",
        "acc_add_pj": "one accumulator add (acc_bits wide)",
        "mac16_pj": "one 16x16-bit multiply-accumulate (router and mixing MACs)",
        "mul16_pj": "one 16x16-bit multiply (x * s_in, softmax products)",
        "mul8_pj": "one 8x8-bit multiply (attention scores)",
        "mul32_pj": "one 32-bit multiply (v * RQ, m * INVQ, output multiplies)",
        "add32_pj": "one 32-bit add (softmax sums, plane-mode reduction)",
        "recip_pj": "one reciprocal (RQ, softmax RCP)",
        "lut_read_pj": "one 16-bit exponent-table read",
    },
    "sram": {
        "sizes_kib": "array sizes (KiB) of the per-bit access energies, ascending",
        "pj_per_bit": "access energy per bit at each size; interpolated in log2(size)",
    },
    "dram": {
        "read_pj_per_bit": "external memory read energy per bit",
        "write_pj_per_bit": "external memory write energy per bit",
    },
    "leakage": {
        "sram_uw_per_kib": "static power per KiB of on-chip SRAM (all buffers + IMEM)",
        "logic_uw_per_pe": "static power of one PE (lanes, popcount tree, accumulators)",
    },
}
TABLE_DIR = Path(__file__).with_name("energy_tables")


@dataclass(frozen=True)
class EnergyTable:
    name: str
    description: str
    values: dict[str, dict[str, Any]]

    def __getitem__(self, key: str) -> Any:
        sec, _, k = key.partition(".")
        return self.values[sec][k]

    def sram_pj_per_bit(self, kib: float) -> float:
        """Per-bit access energy of an SRAM of ``kib`` KiB (log-linear interpolation, clamped)."""
        sizes = self.values["sram"]["sizes_kib"]
        pj = self.values["sram"]["pj_per_bit"]
        if kib <= sizes[0]:
            return pj[0]
        if kib >= sizes[-1]:
            return pj[-1]
        x = math.log2(kib)
        for (s0, e0), (s1, e1) in zip(zip(sizes, pj), zip(sizes[1:], pj[1:])):
            if s0 <= kib <= s1:
                t = (x - math.log2(s0)) / (math.log2(s1) - math.log2(s0))
                return e0 + t * (e1 - e0)
        raise AssertionError("unreachable")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str) -> "EnergyTable":
        data = dict(data)
        name = data.pop("name", None)
        desc = data.pop("description", "")
        data.pop("sources", None)
        if not isinstance(name, str):
            raise ConfigError(f"{source}: energy table needs a string 'name'")
        unknown = set(data) - set(TABLE_SCHEMA)
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; "
                              f"sections: {', '.join(TABLE_SCHEMA)}")
        values: dict[str, dict[str, Any]] = {}
        for sec, keys in TABLE_SCHEMA.items():
            got = data.get(sec)
            if not isinstance(got, dict):
                raise ConfigError(f"{source}: missing section [{sec}] with keys {', '.join(keys)}")
            extra = set(got) - set(keys)
            if extra:
                raise ConfigError(f"{source}: unknown key(s) {sorted(extra)} in [{sec}]; "
                                  f"known: {', '.join(keys)}")
            missing = [k for k in keys if k not in got]
            if missing:
                raise ConfigError(f"{source}: missing key(s) {missing} in [{sec}]")
            for k, v in got.items():
                vals = v if isinstance(v, list) else [v]
                if not vals or any(isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0
                                   for t in vals):
                    raise ConfigError(f"{source}: [{sec}] {k} = {v!r} must be a non-negative number"
                                      + (" list" if isinstance(v, list) else ""))
            values[sec] = dict(got)
        sram = values["sram"]
        if not isinstance(sram["sizes_kib"], list) or not isinstance(sram["pj_per_bit"], list) \
                or len(sram["sizes_kib"]) != len(sram["pj_per_bit"]) \
                or sorted(sram["sizes_kib"]) != sram["sizes_kib"] or 0 in sram["sizes_kib"]:
            raise ConfigError(f"{source}: [sram] sizes_kib and pj_per_bit must be lists of equal length, "
                              "sizes positive and ascending")
        return cls(name, desc, values)

    @classmethod
    def load(cls, name_or_path: str | Path) -> "EnergyTable":
        """A shipped table by name (``horowitz45_ddr3``) or a TOML file of the same schema."""
        p = Path(name_or_path)
        if not p.is_file():
            shipped = TABLE_DIR / f"{name_or_path}.toml"
            if not shipped.is_file():
                raise ConfigError(f"energy table {str(name_or_path)!r} is neither a file nor a shipped "
                                  f"table; shipped: {', '.join(table_names())}")
            p = shipped
        try:
            data = tomllib.loads(read_text_file(p, "energy table", error=ConfigError))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: cannot parse energy table: {exc}") from None
        return cls.from_dict(data, source=str(p))


def default_table(cfg: AcceleratorConfig) -> str:
    """The energy table a run uses unless one is named: HBM2-class for wide (>= 512 bit/cycle) external
    memory, DDR3 otherwise (the memory such a bandwidth implies)."""
    return "horowitz45_hbm2" if cfg.ext_bw_bits >= 512 else "horowitz45_ddr3"


def table_names() -> list[str]:
    return sorted(p.stem for p in TABLE_DIR.glob("*.toml"))


def buffer_kib(cfg: AcceleratorConfig) -> dict[str, float]:
    return {"X": cfg.xbuf_kib, "W": cfg.wbuf_kib, "S": cfg.sbuf_kib, "Q": cfg.qbuf_kib,
            "O": cfg.obuf_kib, "META": cfg.meta_tokens * cfg.meta_bits / 8192,
            "IMEM": cfg.imem_words * 8 / 1024}


def energy_breakdown(counts: dict[str, int], cycles: int, cfg: AcceleratorConfig,
                     table: EnergyTable) -> dict[str, float]:
    """Energy in picojoules by component; the sum of the values is the run's total."""
    t = table.values
    cp = t["compute"]
    kib = buffer_kib(cfg)
    out: dict[str, float] = {}
    out["array"] = counts["lane_ops"] * cp["lane_op_pj"] + counts["acc_adds"] * cp["acc_add_pj"] \
        + counts["reduce_adds"] * cp["add32_pj"]
    out["scale_unit"] = ((counts["router_macs"] + counts["mix_macs"]) * cp["mac16_pj"]
                         + (counts["scale_muls"] + counts["softmax_muls"]) * cp["mul16_pj"]
                         + (counts["quant_muls"] + counts["out_muls"] + counts["d_muls"]) * cp["mul32_pj"]
                         + counts["softmax_adds"] * cp["add32_pj"] + counts["recips"] * cp["recip_pj"]
                         + counts["lut_reads"] * cp["lut_read_pj"])
    out["vector_unit"] = (counts["vector_adds"] * cp["add32_pj"] + counts["vector_mul8s"] * cp["mul8_pj"]
                          + counts["vector_mul16s"] * cp["mul16_pj"]
                          + counts["vector_mul32s"] * cp["mul32_pj"] + counts["vector_lut_reads"] * cp["lut_read_pj"]
                          + counts["vector_recips"] * cp["recip_pj"])
    for b in BUFFER_NAMES:
        bits = counts[f"{b.lower()}_read_bits"] + counts[f"{b.lower()}_write_bits"]
        out[f"{b.lower()}buf" if b != "META" else "meta"] = bits * table.sram_pj_per_bit(kib[b])
    out["imem"] = counts["imem_read_bits"] * table.sram_pj_per_bit(kib["IMEM"])
    out["dram"] = dram_pj(counts["ext_read_bits"], counts["ext_write_bits"], table)
    out["leakage"] = leakage_pj(cycles, cfg, table)
    return out


def dram_pj(read_bits: int, write_bits: int, table: EnergyTable) -> float:
    """External memory energy in picojoules of ``read_bits`` read and ``write_bits`` written."""
    t = table.values["dram"]
    return read_bits * t["read_pj_per_bit"] + write_bits * t["write_pj_per_bit"]


def leakage_pj(cycles: int, cfg: AcceleratorConfig, table: EnergyTable) -> float:
    """Static energy in picojoules of ``cycles`` cycles of ``cfg`` (every buffer and PE leaking)."""
    lk = table.values["leakage"]
    static_uw = sum(buffer_kib(cfg).values()) * lk["sram_uw_per_kib"] + cfg.rows * cfg.cols * lk["logic_uw_per_pe"]
    seconds = cycles / (cfg.clock_mhz * 1e6)
    return static_uw * 1e-6 * seconds * 1e12
