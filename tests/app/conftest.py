"""Fixtures of the app tests."""

import os

import pytest

from .rtl_helpers import ROOT


@pytest.fixture
def fresh_folder(tmp_path, monkeypatch):
    """An empty working folder; the RTL build cache stays the repository's (a cached build, as a user has after
    the first run)."""
    monkeypatch.setenv("BITMOS_RTL_BUILD", os.path.join(ROOT, "tmp", "sim_build"))
    monkeypatch.chdir(tmp_path)
    return tmp_path
