import json
import subprocess
import sys

from bitmos.app.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "config" in out and "asm" in out


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "bitmos.app.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: bitmos" in r.stdout
    assert "not implemented" not in r.stdout.lower()


def test_config_json(capsys):
    assert main(["config", "small", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"] == 4 and data["depths"]["W"] == 1024


def test_config_error_is_one_line(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text("[accelerator]\nrows = 0\n")
    assert main(["config", str(p)]) == 2
    err = capsys.readouterr().err
    assert "field 'rows' = 0 is out of range" in err and "Traceback" not in err


def test_asm(tmp_path, capsys):
    src = tmp_path / "p.s"
    src.write_text("setr K 16 ; comment\nhalt\n")
    out = tmp_path / "p.bmprog"
    assert main(["asm", str(src), "--config", "tiny", "-o", str(out)]) == 0
    from bitmos.container import Program
    assert len(Program.load(out).words) == 2
    src.write_text("bogus\n")
    assert main(["asm", str(src), "-o", str(out)]) == 2
    assert "unknown mnemonic 'bogus'" in capsys.readouterr().err
