"""Every file format bitmos reads, fed seeded mutations of a real file.

Checksummed formats (programs, memory images, exports, checkpoints, compiler manifests and the files they
name, sweep journals) must end in the project's own error or load to exactly the original; text a person
edits (accelerator configs, sweep specs, listings, energy tables, model shapes) must end in the project's
error or load to a valid object. Nothing may raise another exception. CI runs a few thousand cases;
``pytest -m slow tests/fuzz`` runs 100,000. ``pytest -s`` prints the counts per format.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from bitmos.config import AcceleratorConfig, preset_config
from bitmos.container import MemoryImage, Program, load_compiled_folder, manifest_digest
from bitmos.errors import BitmosUserError
from bitmos.export import BinaryLinearExport, ModelExport

from .mutate import fuzz, mutate_bytes, mutate_json_value

#: CI cases per format (x 18 formats: a few thousand in all); the slow run spreads 100,000 over them.
CI_CASES = 250
SLOW_TOTAL = 100_000


def _h(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ---- the original files ----------------------------------------------------------------------------------

def _tiny_export() -> ModelExport:
    rng = np.random.default_rng(0)
    lins = []
    for i, (K, N, E) in enumerate(((32, 8, 4), (16, 8, 0))):
        lins.append(BinaryLinearExport(
            f"layers.{i}.mlp.up_proj", K, N, E, 8, rng.random((N, K)) < 0.5,
            rng.integers(-3000, 3000, (E, K)).astype(np.int16) if E >= 2 else None, 12,
            rng.integers(100, 4000, (E, K)).astype(np.int16) if E >= 1 else None, 12,
            rng.integers(-4000, 4000, (E, N)).astype(np.int16) if E >= 1 else None, 12,
            smul=1234 if E == 0 else 0, smul_exp=12, scheme="mos" if E else "sign"))
    return ModelExport({"dim": 32, "n_layers": 1}, lins, {"tok_embeddings.weight": np.ones((4, 4), np.float32)},
                       {"source": "fuzz"})


def _export_value(e: ModelExport):
    return [e.model_config, e.info, sorted((k, _h(v.tobytes()), v.dtype.str, v.shape) for k, v in e.host.items()),
            [[getattr(l, k) if not isinstance(getattr(l, k), np.ndarray) else
              (_h(getattr(l, k).tobytes()), getattr(l, k).dtype.str, getattr(l, k).shape)
              for k in ("name", "d_in", "d_out", "experts", "act_bits", "router_exp", "s_in_exp", "s_out_exp",
                        "smul", "smul_exp", "scheme", "signs", "router", "s_in", "s_out")]
             for l in e.linears]]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> (original bytes, loader bytes -> comparable value, checksummed?, mutator)."""
    import torch

    from bitmos.compiler import compile_model
    from bitmos.explore.sweep import SweepSpec, append_result, make_tasks, read_results
    from bitmos.isa import assemble, decode, format_instruction
    from bitmos.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
    from bitmos.model.config import ModelConfig
    from bitmos.model.transformer import Transformer
    from bitmos.sim.energy import TABLE_DIR, EnergyTable
    from bitmos.compiler import llama_linears
    from bitmos.compiler.shapes import load_shape
    from bitmos.fileio import read_text_file

    root = tmp_path_factory.mktemp("fuzz")
    scratch = root / "scratch"
    scratch.mkdir()
    cfg = preset_config("small")
    out = {}

    def at(name: str, data: bytes) -> Path:
        p = scratch / name
        p.write_bytes(data)
        return p

    # programs and memory images: a compiled layer of the tiny export
    exp = _tiny_export()
    model = compile_model(exp, cfg, 1)
    folder = model.save(root / "compiled")
    prog_bytes = next(folder.glob("*.bmprog")).read_bytes()
    out["program (.bmprog)"] = (prog_bytes, lambda d: (lambda p: [p.words, p.config.to_dict(), p.meta])(
        Program.from_bytes(d)), True, mutate_bytes)
    out["memory image (.bmmem)"] = ((folder / "memory.bmmem").read_bytes(), lambda d: (lambda m: [
        _h(bytes(m.data)), m.config_fingerprint, m.meta])(MemoryImage.from_bytes(d)), True, mutate_bytes)

    # the export
    exp.save(root / "e.safetensors")
    out["export (.safetensors)"] = ((root / "e.safetensors").read_bytes(),
                                    lambda d: _export_value(ModelExport.load(at("e.safetensors", d))), True,
                                    mutate_bytes)

    # a checkpoint
    torch.manual_seed(0)
    net = Transformer(ModelConfig(vocab_size=16, dim=8, n_layers=1, n_heads=2, hidden_dim=16, max_seq_len=8,
                                  scheme="mos", experts=2))
    save_checkpoint(root / "c.safetensors", net, train_args={"lr": 0.1}, step=3)

    def load_ckpt(d):
        meta, sd = read_checkpoint(at("c.safetensors", d))
        return [meta, sorted((k, _h(v.numpy().tobytes()), str(v.dtype), tuple(v.shape)) for k, v in sd.items())]
    out["checkpoint (.safetensors)"] = ((root / "c.safetensors").read_bytes(), load_ckpt, True, mutate_bytes)

    # the compiler manifest: byte noise, and single JSON values changed (the checksum left as it was)
    man_bytes = (folder / "manifest.json").read_bytes()

    def load_folder(d):
        (folder / "manifest.json").write_bytes(d)
        try:
            f = load_compiled_folder(folder)
        finally:
            (folder / "manifest.json").write_bytes(man_bytes)
        return [f.manifest, [(n, p.words) for n, p in f.programs], _h(bytes(f.memory.data))]
    out["manifest.json"] = (man_bytes, load_folder, True, mutate_bytes)
    out["manifest.json (one value)"] = (man_bytes, load_folder, True, lambda d, rng: json.dumps(
        mutate_json_value(json.loads(d), rng)).encode())

    # a program inside a compiled folder (the manifest's hashes must catch it)
    prog_path = folder / json.loads(man_bytes)["layers"][0]["programs"][0]["file"]
    prog_orig = prog_path.read_bytes()

    def load_folder_prog(d):
        prog_path.write_bytes(d)
        try:
            f = load_compiled_folder(folder)
        finally:
            prog_path.write_bytes(prog_orig)
        return [(n, p.words, p.meta) for n, p in f.programs]
    out["program in a folder"] = (prog_orig, load_folder_prog, True, mutate_bytes)

    # a sweep journal: rows that read back must be exactly the rows written
    journal = root / "results.jsonl"
    rows = [{"key": f"k{i}", "feasible": True, "decode_tokens_per_s": 100.5 + i, "overrides": {"rows": 2 + i}}
            for i in range(3)]
    for r in rows:
        append_result(journal, r)
    written = read_results(journal)

    def load_journal(d):
        got = read_results(at("results.jsonl", d))
        changed = sorted(k for k, r in got.items() if written.get(k) != r)
        if not changed and len(got) < len(written):
            # a refused line is the journal's error: that point is computed again on resume
            raise BitmosUserError(f"{len(written) - len(got)} row(s) refused")
        return changed   # [] = every row as written
    out["sweep journal (results.jsonl)"] = (journal.read_bytes(), load_journal, True, mutate_bytes)

    # forged files: one header value changed AND the checksum recomputed, so only validation stands between
    # the value and the loader (a FormatError, never a KeyError or TypeError; a valid value may load)
    def forge_container(d, rng):
        hlen = struct.unpack_from("<I", d, 12)[0]
        header = mutate_json_value(json.loads(d[16:16 + hlen]), rng)
        if isinstance(header, dict):
            body = {k: v for k, v in header.items() if k != "header_sha256"}
            header["header_sha256"] = _h(json.dumps(body, sort_keys=True).encode())
        blob = json.dumps(header, sort_keys=True).encode()
        return d[:12] + struct.pack("<I", len(blob)) + blob + d[16 + hlen:]
    out["program header (forged checksum)"] = (prog_bytes, out["program (.bmprog)"][1], False, forge_container)

    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    from bitmos.export import _META_KEY, _digest

    def forge_export(d, rng):
        hlen = struct.unpack_from("<Q", d, 0)[0]
        header = mutate_json_value(json.loads(json.loads(d[8:8 + hlen])["__metadata__"][_META_KEY]), rng)
        tensors = st_load(d)
        if isinstance(header, dict):
            header["sha256"] = _digest(tensors, header)
        return st_save(tensors, metadata={_META_KEY: json.dumps(header)})
    out["export header (forged checksum)"] = (out["export (.safetensors)"][0], out["export (.safetensors)"][1],
                                              False, forge_export)

    def forge_manifest(d, rng):
        man = mutate_json_value(json.loads(d), rng)
        if isinstance(man, dict):
            man["manifest_sha256"] = manifest_digest(man)
        return json.dumps(man).encode()
    out["manifest (forged checksum)"] = (man_bytes, load_folder, False, forge_manifest)

    from safetensors.torch import load as st_load_torch
    from safetensors.torch import save as st_save_torch

    from bitmos.model.checkpoint import checkpoint_digest

    def forge_checkpoint(d, rng):
        hlen = struct.unpack_from("<Q", d, 0)[0]
        meta = json.loads(d[8:8 + hlen])["__metadata__"]
        key = rng.choice(sorted(k for k in meta if k != "sha256"))
        if key in ("config", "train_args"):
            meta[key] = json.dumps(mutate_json_value(json.loads(meta[key]), rng))
        else:
            meta[key] = rng.choice(("", "-1", "2", "x", "1e9", meta[key] + "0"))
        tensors = st_load_torch(d)
        meta["sha256"] = checkpoint_digest(tensors, meta)
        return st_save_torch(tensors, metadata=meta)

    def load_model(d):
        net2, meta = load_checkpoint(at("m.safetensors", d))
        return [meta, sorted((k, _h(v.numpy().tobytes())) for k, v in net2.state_dict().items())]
    out["checkpoint metadata (forged)"] = (out["checkpoint (.safetensors)"][0], load_model, False,
                                           forge_checkpoint)

    # text a person edits
    cfg_toml = preset_config("small").to_toml().encode()
    out["config (.toml)"] = (cfg_toml, lambda d: AcceleratorConfig.load(at("c.toml", d)).to_dict(), False,
                             mutate_bytes)
    out["config (.json)"] = (json.dumps(preset_config("small").to_dict()).encode(),
                             lambda d: AcceleratorConfig.load(at("c.json", d)).to_dict(), False, mutate_bytes)
    spec_text = (b'name = "f"\nbase = "tiny"\nmodel = "toy"\nprefill_tokens = 8\nenergy_table = "horowitz45_ddr3"\n'
                 b'workers = 0\nobjectives = ["max:decode_tokens_per_s", "min:luts"]\n[set]\next_mem_mib = 64\n'
                 b'[grid]\nrows = [2, 4]\nlanes = [32, 64]\n[[points]]\ncols = 2\n')

    def load_spec(d):
        spec = SweepSpec.load(at("s.toml", d))
        return [t["key"] for t in make_tasks(spec, "sim")]
    out["sweep spec (.toml)"] = (spec_text, load_spec, False, mutate_bytes)

    prog_words = Program.from_bytes(prog_bytes).words
    listing = "".join(f"{format_instruction(decode(w))} ; pc {pc}\n" for pc, w in enumerate(prog_words)).encode()

    def load_listing(d):
        text = read_text_file(at("l.s", d), "listing")   # what 'bitmos asm' does with a listing file
        try:
            return assemble(text)
        except ValueError as exc:   # 'bitmos asm' prints an assembler ValueError as the one-line error
            raise BitmosUserError(str(exc)) from None
    assert load_listing(listing) == prog_words
    out["listing (asm text)"] = (listing, load_listing, False, mutate_bytes)
    out["energy table (.toml)"] = ((TABLE_DIR / "horowitz45_ddr3.toml").read_bytes(),
                                   lambda d: EnergyTable.load(at("t.toml", d)).values, False, mutate_bytes)
    out["model shape (.json)"] = (json.dumps({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                              "num_attention_heads": 4, "model_type": "llama"}).encode(),
                                  lambda d: llama_linears(load_shape(str(at("m.json", d)))), False, mutate_bytes)
    return out


FORMATS = ["program (.bmprog)", "memory image (.bmmem)", "export (.safetensors)", "checkpoint (.safetensors)",
           "manifest.json", "manifest.json (one value)", "program in a folder", "sweep journal (results.jsonl)",
           "program header (forged checksum)", "export header (forged checksum)", "manifest (forged checksum)",
           "checkpoint metadata (forged)",
           "config (.toml)", "config (.json)", "sweep spec (.toml)", "listing (asm text)", "energy table (.toml)",
           "model shape (.json)"]


def _run(files, fmt: str, cases: int, seed: int):
    original, load, checksummed, mutator = files[fmt]
    counts = fuzz(fmt, original, load, cases=cases, seed=seed, checksummed=checksummed, mutator=mutator)
    print(counts.line())
    assert not counts.crashes, f"{len(counts.crashes)} crash(es), first:\n{counts.crashes[0]}"
    assert not counts.silent_loads, f"{len(counts.silent_loads)} silent load(s), first: {counts.silent_loads[0]}"
    # the suite can fail: most mutations of a checksummed file must be refused
    if checksummed:
        assert counts.project_errors > cases // 2
    return counts


@pytest.mark.parametrize("fmt", FORMATS)
def test_mutated_files_end_in_a_project_error_or_the_original(files, fmt):
    _run(files, fmt, CI_CASES, seed=FORMATS.index(fmt))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_mutated_files_slow(files, fmt):
    _run(files, fmt, SLOW_TOTAL // len(FORMATS) + 1, seed=1000 + FORMATS.index(fmt))


def test_the_mutator_changes_every_input():
    rng = random.Random(0)
    for data in (b"", b"a", b"0123", bytes(range(256))):
        for _ in range(200):
            assert mutate_bytes(data, rng) != data


def test_a_loader_without_checks_is_caught():
    """The harness itself: a loader that accepts anything is reported as silent loads, one that raises a
    non-project exception as crashes."""
    counts = fuzz("lax", b'{"a": 1}', lambda d: d, cases=50, seed=0, checksummed=True)
    assert len(counts.silent_loads) == 50
    counts = fuzz("crashy", b'{"a": 1}', lambda d: json.loads(d)["a"], cases=50, seed=0, checksummed=True)
    assert counts.crashes
