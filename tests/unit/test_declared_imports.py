"""Every third-party module the product imports is declared in pyproject.toml (a fresh
machine installs only what is declared)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ecovisor", "collectors", "streams", "actuators", "policies", "replay")


def _imported_top_level() -> set[str]:
    out: set[str] = set()
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            for n in ast.walk(ast.parse(f.read_text())):
                if isinstance(n, ast.Import):
                    out.update(a.name.split(".")[0] for a in n.names)
                elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                    out.add(n.module.split(".")[0])
    return {m for m in out if m not in sys.stdlib_module_names and m not in PACKAGES
            and m != "__future__"}  # fmt: skip


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_declared() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_norm(re.split(r"[<>=!~;\[ ]", d)[0]) for d in meta["dependencies"]}
    dists = md.packages_distributions()
    missing = {
        m: dists.get(m, [])
        for m in sorted(_imported_top_level())
        if not any(_norm(d) in declared for d in dists.get(m, []))
    }
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
