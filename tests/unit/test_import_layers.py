"""The layer contracts of `make lint` (import-linter, pyproject.toml) are active: a
planted upward import, an I/O import in the core, and a product import of test code each
break them. Runs lint-imports on a copy of the product packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ecovisor", "collectors", "streams", "actuators", "policies", "replay")
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=240,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not LINT.exists():
        pytest.fail(f"{LINT} missing: import-linter is a dev dependency (make setup)")
    t = tmp_path_factory.mktemp("layers")
    for p in PACKAGES:
        shutil.copytree(ROOT / p, t / p, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", t / "pyproject.toml")
    (t / "tests").mkdir()
    (t / "tests" / "__init__.py").write_text("")
    return t


def _plant(tree: Path, rel: str, line: str) -> str:
    f = tree / rel
    before = f.read_text()
    f.write_text(before + f"\n{line}  # planted by test_import_layers\n")
    return before


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    r = _lint(tree)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BROKEN" not in r.stdout


@pytest.mark.parametrize(
    ("rel", "line", "contract"),
    [
        ("ecovisor/core/units.py", "import ecovisor.api.app", "Layers"),
        ("ecovisor/contract/topics.py", "import ecovisor.adapters.kafka", "Layers"),
        ("collectors/trace.py", "import actuators.state", "Layers"),
        ("ecovisor/core/tick.py", "import subprocess", "no I/O"),
        ("streams/bridge.py", "import tests", "never imports test code"),
    ],
)
def test_a_planted_import_breaks_its_contract(tree: Path, rel: str, line: str,
                                              contract: str) -> None:
    before = _plant(tree, rel, line)
    try:
        r = _lint(tree)
    finally:
        (tree / rel).write_text(before)
    assert r.returncode != 0, r.stdout
    broken = [x for x in r.stdout.splitlines() if x.endswith("BROKEN")]
    assert any(contract in x for x in broken), r.stdout
