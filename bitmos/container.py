"""Versioned, checksummed files for what crosses between the compiler, the simulator and the RTL.

Layout of every container: 8-byte magic, u32 format version, u32 header length, a UTF-8 JSON header,
then the payload. The header records the payload's length and SHA-256 and, in ``header_sha256``, the
SHA-256 of the header itself (its canonical JSON without that key), so truncation and corruption of any
byte are caught on read with an error that names the file and the problem. Version 2 added the header
checksum; version 1 files are refused (recompile them).

* program (``.bmprog``): payload = 64-bit instruction words, little-endian; header holds the
  AcceleratorConfig it was compiled for.
* memory image (``.bmmem``): payload = the external memory's initial bytes from address 0; header
  holds the config fingerprint.

A compiler output folder holds one program per layer part, the memory image, listings and
``manifest.json`` (:func:`read_manifest`), which names every file with its SHA-256 and carries
``manifest_sha256`` over itself; the folder is written whole (``bitmos.fileio.atomic_folder``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitmos.config import AcceleratorConfig
from bitmos.errors import FormatError
from bitmos.fileio import check_safe_name, read_text_file, why_not_a_file, sha256_hex, write_bytes_atomic

FORMAT_VERSION = 2
#: Version 2 added the SHA-256 of every named file and of the manifest itself.
MANIFEST_VERSION = 2
MAGIC = {"program": b"BMPROG\x00\x00", "memory": b"BMMEM\x00\x00\x00"}


def _header_digest(header: dict[str, Any]) -> str:
    body = {k: v for k, v in header.items() if k != "header_sha256"}
    return sha256_hex(json.dumps(body, sort_keys=True).encode("utf-8"))


def pack_container(kind: str, header: dict[str, Any], payload: bytes) -> bytes:
    header = dict(header, payload_bytes=len(payload), payload_sha256=sha256_hex(payload))
    header["header_sha256"] = _header_digest(header)
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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"{source}: corrupt header: {exc}") from None
    if not isinstance(header, dict):
        raise FormatError(f"{source}: corrupt header: expected a JSON object, got {type(header).__name__}")
    if header.get("header_sha256") != _header_digest(header):
        raise FormatError(f"{source}: header checksum mismatch: the file is corrupt")
    payload = data[16 + hlen:]
    if len(payload) != header.get("payload_bytes"):
        raise FormatError(f"{source}: payload is {len(payload)} bytes, header says "
                          f"{header.get('payload_bytes')} (truncated or padded file)")
    if sha256_hex(payload) != header.get("payload_sha256"):
        raise FormatError(f"{source}: checksum mismatch: the file is corrupt")
    return header, payload


def _meta(header: dict[str, Any], source: str) -> dict[str, Any]:
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise FormatError(f"{source}: header field 'meta' must be a JSON object, got {type(meta).__name__}")
    return meta


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
        if not isinstance(header.get("config"), dict):
            raise FormatError(f"{source}: header has no config table")
        cfg = AcceleratorConfig.from_dict(header["config"], source=f"{source} config")
        return cls(words, cfg, _meta(header, source))

    @classmethod
    def load(cls, path: str | Path) -> "Program":
        p = Path(path)
        if not p.is_file():
            raise FormatError(f"program file {str(p)!r} {why_not_a_file(p)}")
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
        fingerprint = header.get("config_fingerprint")
        if not isinstance(fingerprint, str):
            raise FormatError(f"{source}: header has no config fingerprint")
        return cls(bytearray(payload), fingerprint, _meta(header, source))

    @classmethod
    def load(cls, path: str | Path) -> "MemoryImage":
        p = Path(path)
        if not p.is_file():
            raise FormatError(f"memory image {str(p)!r} {why_not_a_file(p)}")
        return cls.from_bytes(p.read_bytes(), source=str(p))


# ---- compiler output folders ------------------------------------------------------------------------

def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of a manifest's canonical JSON without its own ``manifest_sha256``."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return sha256_hex(json.dumps(body, sort_keys=True).encode("utf-8"))


@dataclass
class CompiledFolder:
    """What a reader takes from a compiler output folder, every file checked against the manifest."""
    manifest: dict[str, Any]
    programs: list[tuple[str, Program]]        # (layer name[.pN], program) in manifest order
    memory: MemoryImage | None


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The checked ``manifest.json`` of a compiler output folder (a FormatError for anything malformed)."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise FormatError(f"{folder}: a program folder needs manifest.json (written by 'bitmos compile')")
    try:
        man = json.loads(read_text_file(path, "manifest"))
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{path}: not a compiler manifest ({exc})") from None
    if not isinstance(man, dict):
        raise FormatError(f"{path}: not a compiler manifest (expected a JSON object)")
    if man.get("version") != MANIFEST_VERSION:
        raise FormatError(f"{path}: manifest version {man.get('version')!r}, this bitmos reads version "
                          f"{MANIFEST_VERSION}; recompile")
    if man.get("manifest_sha256") != manifest_digest(man):
        raise FormatError(f"{path}: manifest checksum mismatch: the manifest is corrupt or was edited")
    # the checksum matches, so what follows only catches a hand-forged manifest
    layers = man.get("layers")
    if not isinstance(layers, list) or not layers:
        raise FormatError(f"{path}: 'layers' must be a non-empty list")
    for i, layer in enumerate(layers):
        where = f"{path}: layers[{i}]"
        if not isinstance(layer, dict) or not isinstance(layer.get("programs"), list) or not layer["programs"]:
            raise FormatError(f"{where}: expected an object with a non-empty 'programs' list")
        check_safe_name(layer.get("name"), f"{where}: layer name")
        for entry in layer["programs"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise FormatError(f"{where}: every program entry needs 'file' and 'sha256'")
            check_safe_name(entry.get("file"), f"{where}: program file")
    mem = man.get("memory_image")
    if mem is not None:
        check_safe_name(mem, f"{path}: memory_image")
        if not isinstance(man.get("memory_sha256"), str):
            raise FormatError(f"{path}: 'memory_image' needs 'memory_sha256'")
    tokens = man.get("tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise FormatError(f"{path}: 'tokens' must be a positive integer, got {tokens!r}")
    if not isinstance(man.get("timing_only", False), bool):
        raise FormatError(f"{path}: 'timing_only' must be true or false")
    return man


def load_compiled_folder(folder: str | Path) -> CompiledFolder:
    """Every program and the memory image of a compiler output folder, each checked against the SHA-256
    the manifest records, so files of two different compiles are never run together."""
    folder = Path(folder)
    man = read_manifest(folder)

    def read(name: str, digest: str) -> tuple[bytes, str]:
        path = folder / name
        if not path.is_file():
            raise FormatError(f"{path}: named in the manifest but missing (an incomplete folder)")
        data = path.read_bytes()
        if sha256_hex(data) != digest:
            raise FormatError(f"{path}: does not match the SHA-256 in the manifest (a file of another compile?)")
        return data, str(path)

    programs = []
    for layer in man["layers"]:
        many = len(layer["programs"]) > 1
        for i, entry in enumerate(layer["programs"]):
            data, source = read(entry["file"], entry["sha256"])
            programs.append((layer["name"] + (f".p{i}" if many else ""), Program.from_bytes(data, source=source)))
    memory = None
    if man.get("memory_image") is not None:
        data, source = read(man["memory_image"], man["memory_sha256"])
        memory = MemoryImage.from_bytes(data, source=source)
    return CompiledFolder(man, programs, memory)
