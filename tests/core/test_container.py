import pytest

from bitmos import isa
from bitmos.config import preset_config
from bitmos.container import MemoryImage, Program
from bitmos.errors import FormatError


def test_program_round_trip(tmp_path):
    cfg = preset_config("tiny")
    words = isa.assemble("setr K 16\nnop\nhalt")
    p = tmp_path / "p.bmprog"
    Program(words, cfg, {"layer": "x"}).save(p)
    back = Program.load(p)
    assert back.words == words and back.config == cfg and back.meta == {"layer": "x"}


def test_program_corruption_is_caught(tmp_path):
    cfg = preset_config("tiny")
    data = Program(isa.assemble("nop\nhalt"), cfg).to_bytes()
    p = tmp_path / "p.bmprog"
    p.write_bytes(data[:-3])
    with pytest.raises(FormatError, match="truncated or padded"):
        Program.load(p)
    bad = bytearray(data)
    bad[-1] ^= 0xFF
    p.write_bytes(bytes(bad))
    with pytest.raises(FormatError, match="checksum mismatch"):
        Program.load(p)
    p.write_bytes(b"XXXXXXXX" + data[8:])
    with pytest.raises(FormatError, match="bad magic"):
        Program.load(p)
    bad = bytearray(data)
    bad[8] = 9
    p.write_bytes(bytes(bad))
    with pytest.raises(FormatError, match="format version 9"):
        Program.load(p)
    with pytest.raises(FormatError, match="does not exist"):
        Program.load(tmp_path / "none.bmprog")


def test_program_too_long_for_imem():
    cfg = preset_config("tiny")
    with pytest.raises(FormatError, match="instruction memory holds 1024"):
        Program([0] * 1025, cfg).to_bytes()


def test_memory_image_round_trip(tmp_path):
    m = MemoryImage(bytearray(range(256)) * 4, "abc", {"regions": []})
    p = tmp_path / "m.bmmem"
    m.save(p)
    assert MemoryImage.load(p).data == m.data


def test_atomic_write_keeps_old_file_on_error(tmp_path, monkeypatch):
    from bitmos import fileio
    p = tmp_path / "out.bin"
    p.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(fileio.os, "replace", boom)
    with pytest.raises(OSError):
        fileio.write_bytes_atomic(p, b"new")
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_uses_normal_permissions(tmp_path):
    import os
    import stat

    from bitmos import fileio
    p = tmp_path / "f.txt"
    fileio.write_text_atomic(p, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
