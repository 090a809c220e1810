"""The explore subcommands through an argparse harness (bitmos/app/cli.py lists bitmos.explore.cli)."""

import argparse
import json
from pathlib import Path

import pytest

from bitmos.errors import BitmosUserError
from bitmos.explore.cli import add_commands, load_config

DATA = Path(__file__).parent / "data"


def run(argv):
    p = argparse.ArgumentParser(prog="bitmos")
    add_commands(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    return args.func(args)


def test_sweep_cli_json(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('base = "tiny"\nmodel = "toy"\nprefill_tokens = 4\nworkers = 0\n'
                    '[grid]\nrows = [1, 2]\n')
    assert run(["sweep", str(spec), "-o", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["points"] == 2 and summary["computed"] == 2
    assert Path(summary["csv"]).exists()


def test_synth_rejects_device_of_other_family():
    with pytest.raises(BitmosUserError, match="not a ecp5 device"):
        run(["synth", "--verilog", str(DATA / "xnor_pe16.v"), "--target", "ecp5", "--device", "hx8k"])


def test_set_overrides():
    cfg = load_config("small", ["rows=8", "cols=8"])
    assert (cfg.rows, cfg.cols, cfg.lanes) == (8, 8, 32) and cfg.name == "small+rows=8,cols=8"
