"""The contract in bitmos/ is a leaf: importing it imports no area and not the application layer."""

import ast
import subprocess
import sys
from pathlib import Path

import bitmos

CONTRACT = sorted(p.stem for p in Path(bitmos.__file__).parent.glob("*.py") if p.stem != "__init__")
AREAS = ("bitmos.model", "bitmos.compiler", "bitmos.sim", "bitmos.rtl", "bitmos.explore", "bitmos.app")

# The command docs/architecture.md gives for checking it by hand.
PROBE = ("import importlib, sys; [importlib.import_module('bitmos.' + m) for m in sys.argv[1:]]; "
         "print(' '.join(sorted(m for m in sys.modules if m.startswith('bitmos'))))")


def test_contract_modules_are_the_expected_ones():
    # a new module in bitmos/ must be a contract module; the join lives in bitmos.app
    assert "cli" not in CONTRACT and "pipeline" not in CONTRACT
    assert {"config", "formats", "isa", "container", "export"} <= set(CONTRACT)


def test_importing_the_contract_imports_no_area():
    out = subprocess.run([sys.executable, "-c", PROBE, *CONTRACT], capture_output=True, text=True, check=True)
    loaded = out.stdout.split()
    assert loaded, out.stderr
    assert [m for m in loaded if m.startswith(AREAS)] == []
    # and the probe does see an area when one is imported (the check itself can fail)
    out = subprocess.run([sys.executable, "-c", PROBE, "sim"], capture_output=True, text=True)
    assert "bitmos.sim" in out.stdout.split() or out.returncode != 0


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_areas_import_only_the_contract_and_their_allowed_peers():
    root = Path(bitmos.__file__).parent.parent
    # explore joins compiler and sim for the sweep; model, compiler, sim, rtl are independent of each other
    forbidden = {"model": AREAS[1:], "compiler": ("bitmos.model", "bitmos.sim", "bitmos.rtl", "bitmos.explore",
                                                  "bitmos.app"),
                 "sim": ("bitmos.model", "bitmos.compiler", "bitmos.rtl", "bitmos.explore", "bitmos.app"),
                 "rtl": ("bitmos.model", "bitmos.compiler", "bitmos.sim", "bitmos.explore", "bitmos.app"),
                 "explore": ("bitmos.model", "bitmos.app")}
    for area, bad in forbidden.items():
        for path in (root / area).glob("*.py"):
            hits = [n for n in _imports(path) if n.startswith(bad)]
            assert not hits, f"{area}/{path.name} imports {hits}"
