"""The Hugging Face `datasets` loader, on a dataset folder made here (no hub access)."""

import json

import pytest

from bitmos.model.data import load_corpus


def test_hf_loader_reads_a_local_dataset_folder(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    root = tmp_path / "tiny_corpus"
    root.mkdir()
    train = [{"text": f"train line {i}: the quick brown fox"} for i in range(20)]
    val = [{"text": f"validation line {i}"} for i in range(5)]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in train) + "\n")
    (root / "validation.jsonl").write_text("\n".join(json.dumps(r) for r in val) + "\n")
    tr, va = load_corpus(f"hf:{root}")
    assert tr.splitlines() == [r["text"] for r in train]
    assert va.splitlines() == [r["text"] for r in val]
