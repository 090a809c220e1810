"""Versioned, checksummed files for what crosses between the compiler, the simulator and the RTL.

Layout of every container: 8-byte magic, u32 format version, u32 header length, a UTF-8 JSON header,
then the payload. The header records the payload's length and SHA-256, so truncation and corruption
are caught on read with an error that names the file and the problem.

* program (``.bmprog``): payload = 64-bit instruction words, little-endian; header holds the
  AcceleratorConfig it was compiled for.
* memory image (``.bmmem``): payload = the external memory's initial bytes from address 0; header
  holds the config fingerprint.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitmos.config import AcceleratorConfig
from bitmos.errors import FormatError
from bitmos.fileio import sha256_hex, write_bytes_atomic

FORMAT_VERSION = 1
MAGIC = {"program": b"BMPROG\x00\x00", "memory": b"BMMEM\x00\x00\x00"}


def pack_container(kind: str, header: dict[str, Any], payload: bytes) -> bytes:
    header = dict(header, payload_bytes=len(payload), payload_sha256=sha256_hex(payload))
    blob = json.dumps(header, sort_keys=True).encode("utf-8")
    return MAGIC[kind] + struct.pack("<II", FORMAT_VERSION, len(blob)) + blob + payload


def unpack_container(kind: str, data: bytes, *, source: str = "<bytes>") -> tuple[dict[str, Any], bytes]:
    magic = MAGIC[kind]
    if len(data) < 16 or data[:8] != magic:
        raise FormatError(f"{source}: not a bitmos {kind} file (bad magic)")
    version, hlen = struct.unpack_from("<II", data, 8)
    if version != FORMAT_VERSION:
        raise FormatError(f"{source}: {kind} format version {version}, this bitmos reads version "
                          f"{FORMAT_VERSION}; recompile with this version")
    if 16 + hlen > len(data):
        raise FormatError(f"{source}: truncated header ({len(data) - 16} of {hlen} bytes)")
    try:
        header = json.loads(data[16:16 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{source}: corrupt header: {exc}") from None
    payload = data[16 + hlen:]
    if len(payload) != header.get("payload_bytes"):
        raise FormatError(f"{source}: payload is {len(payload)} bytes, header says "
                          f"{header.get('payload_bytes')} (truncated or padded file)")
    if sha256_hex(payload) != header.get("payload_sha256"):
        raise FormatError(f"{source}: checksum mismatch: the file is corrupt")
    return header, payload


@dataclass
class Program:
    """A compiled instruction stream for one AcceleratorConfig."""
    words: list[int]
    config: AcceleratorConfig
    meta: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        if len(self.words) > self.config.imem_words:
            raise FormatError(f"program has {len(self.words)} words; instruction memory holds "
                              f"{self.config.imem_words} (imem_words)")
        payload = b"".join(struct.pack("<Q", w) for w in self.words)
        header = {"config": self.config.to_dict(), "n_words": len(self.words), "meta": self.meta}
        return pack_container("program", header, payload)

    def save(self, path: str | Path) -> None:
        write_bytes_atomic(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "<bytes>") -> "Program":
        header, payload = unpack_container("program", data, source=source)
        if len(payload) % 8:
            raise FormatError(f"{source}: payload length {len(payload)} is not a whole number of words")
        words = [w for (w,) in struct.iter_unpack("<Q", payload)]
        if header.get("n_words") != len(words):
            raise FormatError(f"{source}: header says {header.get('n_words')} words, payload has {len(words)}")
        cfg = AcceleratorConfig.from_dict(header["config"], source=f"{source} config")
        return cls(words, cfg, header.get("meta", {}))

    @classmethod
    def load(cls, path: str | Path) -> "Program":
        p = Path(path)
        if not p.is_file():
            raise FormatError(f"program file {str(p)!r} does not exist")
        return cls.from_bytes(p.read_bytes(), source=str(p))


@dataclass
class MemoryImage:
    """The external memory's initial contents (bytes from address 0)."""
    data: bytearray
    config_fingerprint: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        header = {"config_fingerprint": self.config_fingerprint, "meta": self.meta}
        return pack_container("memory", header, bytes(self.data))

    def save(self, path: str | Path) -> None:
        write_bytes_atomic(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "<bytes>") -> "MemoryImage":
        header, payload = unpack_container("memory", data, source=source)
        return cls(bytearray(payload), header["config_fingerprint"], header.get("meta", {}))

    @classmethod
    def load(cls, path: str | Path) -> "MemoryImage":
        p = Path(path)
        if not p.is_file():
            raise FormatError(f"memory image {str(p)!r} does not exist")
        return cls.from_bytes(p.read_bytes(), source=str(p))
