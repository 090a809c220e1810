import dataclasses
import json
import unittest
from pathlib import Path

import pytest

from bitmos.config import LATER_UNITS, REPORTING_FIELDS, PRESETS, AcceleratorConfig, preset_config
from bitmos.errors import ConfigError


class TestAcceleratorConfig(unittest.TestCase):
    def test_presets_load_and_have_sane_depths(self):
        self.assertEqual(set(PRESETS), {"tiny", "small", "small-w8", "medium", "asic32"})
        for name in PRESETS:
            with self.subTest(name=name):
                c = preset_config(name)
                self.assertEqual(c.name, name)
                for b in "XWSQO":
                    self.assertGreaterEqual(c.depth(b), 2)
                self.assertEqual(c.lanes % c.cols, 0)

    def test_derived_quantities(self):
        c = AcceleratorConfig(rows=4, cols=4, lanes=32, act_bits=8, experts=4)
        self.assertEqual(c.act_qmax, 127)
        self.assertEqual(c.nchunks(70), 3)
        self.assertEqual(c.xlines(70), 3 * 8)
        self.assertEqual(c.sbuf_line_bits, 4 * 4 * 16)
        self.assertEqual(c.plane_rows, 4)
        self.assertEqual(c.planes_per_row, 2)
        self.assertEqual(AcceleratorConfig(act_bits=1, experts=0).act_qmax, 1)
        self.assertEqual(AcceleratorConfig(act_bits=2).act_qmax, 1)
        self.assertEqual(c.binary_ops_per_cycle(), 2 * 4 * 4 * 32)

    def test_errors_name_field_value_and_range(self):
        cases = [
            (dict(rows=0), r"field 'rows' = 0 is out of range; allowed 1\.\.64"),
            (dict(cols=65), r"field 'cols' = 65 is out of range"),
            (dict(lanes=12), r"'lanes' = 12 must be a multiple of 8"),
            (dict(lanes=40, cols=16), r"'lanes' = 40 must be a multiple of 'cols' = 16"),
            (dict(act_bits=3), r"'act_bits' = 3 is not supported; allowed 1, 2, 4, 8"),
            (dict(acc_bits=40), r"field 'acc_bits' = 40 is out of range"),
            (dict(experts=9), r"field 'experts' = 9 is out of range; allowed 0\.\.8"),
            (dict(wbuf_kib=0), r"field 'wbuf_kib' = 0 is out of range"),
            (dict(qbuf_kib=1, rows=64, lanes=1024, cols=8), r"'qbuf_kib' = 1 gives 0 lines"),
            (dict(meta_tokens=2, rows=4), r"'meta_tokens' = 2 must be at least 'rows' = 4"),
            (dict(ext_bw_bits=12), r"'ext_bw_bits' = 12 must be a multiple of 8"),
            (dict(ext_latency=-1), r"field 'ext_latency' = -1 is out of range"),
            (dict(x_frac_bits=16), r"field 'x_frac_bits' = 16 is out of range"),
            (dict(clock_mhz=0.0), r"field 'clock_mhz' = 0.0 is out of range"),
            (dict(rows=2.5), r"field 'rows' must be an integer, got 2.5"),
            (dict(imem_words=8), r"field 'imem_words' = 8 is out of range"),
        ]
        for kwargs, pattern in cases:
            with self.subTest(kwargs=kwargs):
                with self.assertRaisesRegex(ConfigError, pattern) as ctx:
                    AcceleratorConfig(**kwargs)
                # the error carries the field it is about (the first key, or the derived one it names)
                self.assertIn(ctx.exception.field, kwargs.keys() | {"lanes", "qbuf_kib"})

    def test_frozen(self):
        c = AcceleratorConfig()
        with self.assertRaises(Exception):
            c.rows = 3  # type: ignore[misc]


def test_toml_and_json_round_trip(tmp_path):
    c = preset_config("medium")
    p = tmp_path / "c.toml"
    p.write_text(c.to_toml())
    assert AcceleratorConfig.load(p) == c
    j = tmp_path / "c.json"
    j.write_text(json.dumps(c.to_dict()))
    assert AcceleratorConfig.load(j) == c
    assert AcceleratorConfig.load("medium") == c


def test_preset_with_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[accelerator]\nact_bits = 4\npreset = "small"\n')
    c = AcceleratorConfig.load(p)
    assert c.act_bits == 4 and c.rows == 4 and c.name == "small"


@pytest.mark.parametrize("text, pattern", [
    ('[accelerator]\nrowz = 3\n', r"unknown field 'rowz'"),
    ('[accelerator]\nrows = "4"\n', r"field 'rows' must be an integer, got '4'"),
    ('[accelerator]\nrows = true\n', r"field 'rows' must be an integer, got True"),
    ('rows = 3\n[accelerator]\ncols = 2\n', r"unknown top-level key\(s\) \['rows'\]"),
    ('[accelerator\nrows = 3\n', r"cannot parse"),
    ('[accelerator]\npreset = "huge"\n', r"unknown preset 'huge'"),
    ('[accelerator]\nrows = 100\n', r"field 'rows' = 100 is out of range"),
])
def test_bad_files(tmp_path, text, pattern):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        AcceleratorConfig.load(p)


def test_missing_file():
    with pytest.raises(ConfigError, match=r"does not exist \(and is not a preset"):
        AcceleratorConfig.load("/nonexistent/cfg.toml")


def test_fingerprint_changes_with_every_machine_field_and_only_those():
    a = preset_config("small")
    assert a.fingerprint() == AcceleratorConfig.from_dict(a.to_dict()).fingerprint()
    for f in dataclasses.fields(a):
        d = a.to_dict()
        if f.name == "name":
            d["name"] = "another-name"
        elif f.name == "act_bits":
            d["act_bits"] = 4
        elif f.name == "lanes":
            d["lanes"] = 64
        elif f.name in ("acc_bits", "x_frac_bits", "out_frac_bits", "experts", "rows"):
            d[f.name] = d[f.name] - 1
        elif f.name in LATER_UNITS:
            d[f.name] = 1 - d[f.name]
        else:
            d[f.name] = d[f.name] * 2
        b = AcceleratorConfig.from_dict(d)
        same = a.fingerprint() == b.fingerprint()
        # a name or a clock describes the machine, it does not change what it computes or its cycles
        assert same == (f.name in REPORTING_FIELDS), f.name


def test_a_later_unit_absent_keeps_the_fingerprint_and_the_whole_file_rule(tmp_path):
    """vector_unit = 0 is the machine without the unit: the same fingerprint as a config that never named it,
    and a whole config file written before the field existed still loads; 1 is another machine."""
    a = preset_config("small")
    d = a.to_dict()
    assert d["vector_unit"] == 0
    blob = json.dumps({k: v for k, v in d.items() if k not in LATER_UNITS}, sort_keys=True).encode()
    import hashlib
    assert a.fingerprint() == hashlib.sha256(
        json.dumps({k: v for k, v in json.loads(blob).items() if k not in REPORTING_FIELDS}, sort_keys=True)
        .encode()).hexdigest()[:16]
    old = tmp_path / "old.toml"
    old.write_text("[accelerator]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in d.items()
                                               if k not in LATER_UNITS))
    assert AcceleratorConfig.load(old) == a
    on = dataclasses.replace(a, vector_unit=1)
    assert on.fingerprint() != a.fingerprint()
    with pytest.raises(ConfigError, match="vector_unit"):
        dataclasses.replace(a, vector_unit=2)
    assert not a.to_toml().rstrip().endswith(("vector_unit = 0", "vector_unit = 1"))
    # attn_rows: 0 (one row) keeps the vector unit's machine as it was; 4 is another; it needs the unit
    assert dataclasses.replace(on, attn_rows=0).fingerprint() == on.fingerprint()
    assert dataclasses.replace(on, attn_rows=4).fingerprint() != on.fingerprint()
    with pytest.raises(ConfigError, match="'attn_rows' = 4 sizes the vector unit's attention; it needs vector_unit"):
        dataclasses.replace(a, attn_rows=4)
    with pytest.raises(ConfigError, match="attn_rows"):
        dataclasses.replace(on, attn_rows=65)
    assert not a.to_toml().rstrip().endswith("attn_rows = 0")


# ---- a config file cut off is an error, never a shorter config (issue 22) ------------------------------------

def _whole_files():
    """(file name, bytes) of configs as people and bitmos write them."""
    small = preset_config("small")
    return [
        ("whole.toml", small.to_toml().encode()),                                   # `bitmos config small`
        ("shipped.toml", (Path(__file__).parents[2] / "explore" / "configs" / "ecp5_85f.toml").read_bytes()),
        ("partial.toml", b'# mine\n[accelerator]\nname = "mine"\nrows = 16\nlanes = 64\next_mem_mib = 128\n'
                         b'preset = "small"\n# end\n'),
        ("toplevel.toml", b'rows = 8\nact_bits = 4\npreset = "medium"\n'),
        ("whole.json", json.dumps(small.to_dict(), indent=1).encode()),
        ("partial.json", b'{"preset": "small", "rows": 16, "lanes": 64}\n'),
    ]


@pytest.mark.parametrize("name, data", _whole_files(), ids=[n for n, _ in _whole_files()])
def test_every_truncation_of_a_config_file_is_refused_or_the_same(tmp_path, name, data):
    """Cut the file after every byte: each prefix is refused with a ConfigError naming the file, or it loads to
    exactly the config of the whole file (only trailing comments or blank space were cut)."""
    p = tmp_path / name
    p.write_bytes(data)
    want = AcceleratorConfig.load(p)
    same = refused = 0
    for n in range(len(data)):
        p.write_bytes(data[:n])
        try:
            got = AcceleratorConfig.load(p)
        except ConfigError as exc:
            assert str(p) in str(exc) and "\n" not in str(exc)
            refused += 1
            continue
        assert got == want, f"{name} cut to {n} bytes loads as another config: {data[:n]!r}"
        same += 1
    assert refused > 0.8 * len(data)


@pytest.mark.parametrize("text, pattern", [
    ('[accelerator]\nrows = 8\nlanes = 64\n', r"sets 2 of the 21 fields and names no preset, so it may be cut off "
                                             r"\(missing name, cols, act_bits"),
    ('[accelerator]\npreset = "small"\nrows = 8\n', r"preset = 'small' must be the last line"),
    ('[accelerator]\nrows = 8\npreset = "small"\nlanes = 64\n', r"must be the last line"),
    ('[accelerator]\nrows = 16\npreset = "small"\nact_bits = 1', r"last line 'act_bits = 1' has no line end"),
])
def test_partial_or_cut_config_messages(tmp_path, text, pattern):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        AcceleratorConfig.load(p)


def test_a_partial_json_config_may_name_its_preset_anywhere(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"preset": "small", "rows": 8}')   # a JSON document cut short never parses
    assert AcceleratorConfig.load(p).rows == 8


def test_every_preset_names_every_field():
    from bitmos.config import PRESETS
    for name in PRESETS:
        assert preset_config(name) == AcceleratorConfig.load(name)
