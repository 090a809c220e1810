"""Energy counts vs hand counts, energy tables, reports and the simulate CLI."""

import dataclasses
import json
import unittest
from pathlib import Path
import tempfile

from bitmos.app.cli import main as cli_main
from bitmos.config import preset_config
from bitmos.container import MemoryImage, Program
from bitmos.errors import ConfigError
from bitmos.isa import assemble
from bitmos.sim import EnergyTable, Simulator
from bitmos.sim.energy import energy_breakdown, table_names
from bitmos.sim.report import format_text, summarize, write_plots

SMALL = preset_config("small")   # R = C = 4, L = 32, k = 8, E = 4; X line 64 b, W 128 b, S 256 b, Q 128 b, O 128 b


class TestCounts(unittest.TestCase):
    def test_hand_counts(self):
        words = assemble("""
            setr K 40
            load buf=W line=0 nlines=2 ext=0
            wait
            quant mode=token x=0 q=0 meta=0 ntok=3
            matmul mode=token q=0 w=0 o=0 ntiles=1
            quant mode=plane x=0 q=0 meta=0 ntok=1
            matmul mode=plane q=0 w=0 o=0 ntiles=2
            scaleout mode=token o=0 s=0 meta=0 ntok=3 ntiles=1
            store buf=O line=0 nlines=4 ext=0
            halt
        """)
        r = Simulator(SMALL).run(words, bytearray(4096), functional=False)
        c = r.counts
        # K = 40: nch = 2, XL = 2 * 32 / 4 = 16 lines; P = 2, Ra = 4
        self.assertEqual(c["instructions"], 10)
        self.assertEqual(c["imem_read_bits"], 640)
        # quant: 4 tokens (3 + 1); router pass XL*C*E = 16*4*4 = 256 MACs per token, mixing the same
        self.assertEqual(c["router_macs"], 4 * 256)
        # mixing: 4 quant tokens * 256 + scaleout 1 tile * 3 tokens * C*E = 48
        self.assertEqual(c["mix_macs"], 4 * 256 + 48)
        self.assertEqual(c["scale_muls"], 4 * 64)
        self.assertEqual(c["quant_muls"], 4 * 2 * 32)          # nch * L per token
        self.assertEqual(c["out_muls"], 3 * 2 * 4)
        self.assertEqual(c["recips"], 4 * 2)
        # XBUF reads: 2 passes x 16 lines x 64 bits per token
        self.assertEqual(c["x_read_bits"], 4 * 2 * 16 * 64)
        # SBUF reads: quant 2 x 16 lines x 256 bits per token; scaleout 3 lines
        self.assertEqual(c["s_read_bits"], 4 * 2 * 16 * 256 + 3 * 256)
        # QBUF writes: token quant 3 tokens x nch*k slots of 32 bits; plane quant nch*P lines of 128 bits
        self.assertEqual(c["q_write_bits"], 3 * 2 * 8 * 32 + 2 * 2 * 128)
        # matmul token: nch*k = 16 steps x 16 PEs x 32 lanes; plane: 2 tiles x nch*k = 16 (plane,chunk) x 4 PEs x 32
        self.assertEqual(c["lane_ops"], 16 * 16 * 32 + 2 * 16 * 4 * 32)
        self.assertEqual(c["acc_adds"], 16 * 16 + 2 * 16 * 4)
        self.assertEqual(c["reduce_adds"], 2 * 3 * 4)
        # useful: K=40 lanes x k planes x C columns x 3 valid token rows; plane: 40 x 8 x 4 per tile
        self.assertEqual(c["useful_lane_ops"], 40 * 8 * 4 * 3 + 2 * 40 * 8 * 4)
        self.assertEqual(c["w_read_bits"], (1 + 2) * 2 * 128)
        self.assertEqual(c["q_read_bits"], 16 * 128 + 2 * 4 * 128)
        self.assertEqual(c["o_write_bits"], (4 + 2 + 3) * 128)
        self.assertEqual(c["o_read_bits"], 3 * 128 + 4 * 128)
        self.assertEqual(c["w_write_bits"], 2 * 128)
        self.assertEqual(c["ext_read_bits"], 256)
        self.assertEqual(c["ext_write_bits"], 512)
        self.assertEqual(c["meta_write_bits"], 4 * SMALL.meta_bits)
        self.assertEqual(c["meta_read_bits"], 3 * SMALL.meta_bits)
        self.assertEqual((r.dma_bytes_read, r.dma_bytes_written), (32, 64))

    def test_vector_unit_counts_and_energy(self):
        cfg = dataclasses.replace(SMALL, vector_unit=1)
        words = assemble("""
            setr K 37
            resadd mode=token r=0 o=40 ntok=2
            silu mode=plane g=0 u=40 x=0 ntok=1
            rmsnorm mode=token r=0 x=0 s=0 ntok=3
            halt
        """)
        r = Simulator(cfg).run(words, bytearray(64), functional=False)
        c = r.counts
        # K = 37: NL = 10 OBUF lines, XL = 2 chunks x 8 = 16 XBUF lines; tokens: resadd 2, silu 1, rmsnorm 3
        self.assertEqual(c["o_read_bits"], (2 * 2 * 10 + 2 * 1 * 10 + 3 * 3 * 10) * 128)
        self.assertEqual(c["o_write_bits"], 2 * 10 * 128)
        self.assertEqual(c["x_write_bits"], (1 + 3) * 16 * 64)
        self.assertEqual(c["s_read_bits"], 3 * 10 * 256)
        self.assertEqual(c["vector_adds"], 2 * 10 * 4 + 3 * 2 * 10 * 4)
        self.assertEqual(c["vector_lut_reads"], 10 * 4)
        self.assertEqual(c["vector_mul32s"], 2 * 10 * 4 + 3 * 2 * 10 * 4)
        self.assertEqual(c["vector_mul16s"], 3 * 10 * 4)
        self.assertEqual(c["vector_recips"], 3 * 2)
        t = EnergyTable.load("horowitz45_ddr3")
        e = energy_breakdown(c, r.cycles, cfg, t)
        cp = t.values["compute"]
        self.assertAlmostEqual(e["vector_unit"], 320 * cp["add32_pj"] + 120 * cp["mul16_pj"] + 320 * cp["mul32_pj"]
                               + 40 * cp["lut_read_pj"] + 6 * cp["recip_pj"])
        self.assertEqual(energy_breakdown(Simulator(SMALL).run(assemble("halt"), functional=False).counts, 1, SMALL,
                                          t)["vector_unit"], 0)
        ln = Simulator(cfg).run(assemble("setr K 37\nlayernorm mode=plane r=0 x=0 ntok=1\nhalt"),
                                functional=False).counts
        # a mean pass more than rmsnorm (4 OBUF reads a line, its adds and divide), no SBUF gains
        self.assertEqual((ln["o_read_bits"], ln["s_read_bits"], ln["x_write_bits"]), (4 * 10 * 128, 0, 16 * 64))
        self.assertEqual((ln["vector_adds"], ln["vector_mul16s"], ln["vector_mul32s"], ln["vector_recips"]),
                         (4 * 10 * 4, 10 * 4, 2 * 10 * 4, 3))
        rp = Simulator(cfg).run(assemble("setr K 64\nsetr HDIM 16\nrope mode=token q=0 s=0 ntok=2\nhalt"),
                                functional=False).counts
        # in place: NL = 16 lines a token read and written; each token's 16/4 = 4 table lines; 2 products, 1 add
        self.assertEqual((rp["o_read_bits"], rp["o_write_bits"], rp["s_read_bits"]), (32 * 128, 32 * 128, 8 * 256))
        self.assertEqual((rp["vector_mul32s"], rp["vector_adds"]), (2 * 32 * 4, 32 * 4))


class TestEnergyTable(unittest.TestCase):
    def test_shipped(self):
        self.assertIn("horowitz45_ddr3", table_names())
        for name in ("horowitz45_ddr3", "horowitz45_hbm2", "horowitz45_gddr5", "horowitz45_lpddr4"):
            t = EnergyTable.load(name)
            self.assertEqual(t.name, name)
        self.assertEqual(EnergyTable.load("horowitz45_hbm2")["dram.read_pj_per_bit"], 3.9)
        t = EnergyTable.load("horowitz45_ddr3")
        self.assertAlmostEqual(t.sram_pj_per_bit(8), 10 / 64)
        self.assertAlmostEqual(t.sram_pj_per_bit(16), (10 / 64 + 20 / 64) / 2)
        self.assertAlmostEqual(t.sram_pj_per_bit(4096), 100 / 64)

    def write(self, text):
        d = tempfile.mkdtemp()
        p = Path(d) / "t.toml"
        p.write_text(text)
        return p

    def test_user_table_errors(self):
        base = (Path(__file__).parents[2] / "sim/energy_tables/horowitz45_ddr3.toml").read_text()
        self.assertEqual(EnergyTable.load(self.write(base)).name, "horowitz45_ddr3")
        with self.assertRaisesRegex(ConfigError, r"unknown key\(s\) \['bogus'\] in \[compute\]"):
            EnergyTable.load(self.write(base.replace("[compute]", "[compute]\nbogus = 1")))
        with self.assertRaisesRegex(ConfigError, r"missing key\(s\) \['mul32_pj'\] in \[compute\]"):
            EnergyTable.load(self.write(base.replace("mul32_pj = 3.1", "")))
        with self.assertRaisesRegex(ConfigError, r"unknown section\(s\) \['extra'\]"):
            EnergyTable.load(self.write(base + "\n[extra]\na = 1\n"))
        with self.assertRaisesRegex(ConfigError, "must be a non-negative number"):
            EnergyTable.load(self.write(base.replace("mul32_pj = 3.1", 'mul32_pj = "x"')))
        with self.assertRaisesRegex(ConfigError, "neither a file nor a shipped table"):
            EnergyTable.load("nope")

    def test_breakdown_sums(self):
        words = assemble("setr K 40\nload buf=W line=0 nlines=2 ext=0\nhalt")
        r = Simulator(SMALL).run(words, bytearray(64), functional=False)
        t = EnergyTable.load("horowitz45_hbm2")
        e = energy_breakdown(r.counts, r.cycles, SMALL, t)
        self.assertAlmostEqual(e["dram"], 256 * 3.9)
        self.assertAlmostEqual(e["imem"], 3 * 64 * t.sram_pj_per_bit(SMALL.imem_words * 8 / 1024))
        s = summarize(r, t, tokens=1)
        self.assertAlmostEqual(s["energy_j"], sum(e.values()) * 1e-12)
        self.assertIn("tokens/J", format_text(s))


class TestCli(unittest.TestCase):
    def test_simulate_file_and_plots(self):
        d = Path(tempfile.mkdtemp())
        words = assemble("setr K 40\nload buf=W line=0 nlines=2 ext=0\nwait\n"
                         "quant mode=plane ntok=1\nmatmul mode=plane ntiles=1\nhalt")
        Program(words, SMALL).save(d / "p.bmprog")
        MemoryImage(bytearray(256), SMALL.fingerprint()).save(d / "m.bmmem")
        import contextlib
        import io
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            rc = cli_main(["simulate", str(d / "p.bmprog"), "--memory", str(d / "m.bmmem"), "--json",
                           "--plots", str(d / "plots"), "--energy-table", "horowitz45_lpddr4"])
        self.assertEqual(rc, 0)
        s = json.loads(out.getvalue())
        self.assertEqual(s["cycles"], Simulator(SMALL).run(words, bytearray(256)).cycles)
        for f in ("roofline.png", "energy.png", "timeline.png", "report.json"):
            self.assertTrue((d / "plots" / f).is_file(), f)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli_main(["simulate", str(d / "missing.bmprog")])
        self.assertEqual(rc, 2)
        self.assertIn("does not exist", err.getvalue())


if __name__ == "__main__":
    unittest.main()
