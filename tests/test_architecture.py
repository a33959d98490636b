"""The boundaries of docs/architecture.md, checked on the source: the engine never imports the catalog, and no
module imports its way back into itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The engine: everything of mmsearch/ but the project's wiring (settings, urls, the demo command) and the
# shopper site (mmsearch/web, an app above both engine and catalog), plus the workers.
ENGINE = [ROOT / "workers", *sorted((ROOT / "mmsearch").rglob("*.py"))]
NOT_ENGINE = {"mmsearch/settings.py", "mmsearch/urls.py", "mmsearch/management/commands/demo.py"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def engine_files() -> list[Path]:
    files = []
    for entry in ENGINE:
        for path in ([entry] if entry.is_file() else sorted(entry.rglob("*.py"))):
            rel = path.relative_to(ROOT).as_posix()
            if rel in NOT_ENGINE or rel.startswith("mmsearch/web/") or "/migrations/" in rel:
                continue
            files.append(path)
    return files


def test_the_engine_imports_nothing_from_the_catalog():
    offenders = {
        path.relative_to(ROOT).as_posix(): sorted(m for m in imported_modules(path) if m.split(".")[0] == "catalog")
        for path in engine_files()
    }
    assert len(offenders) > 40  # the walk found the engine's modules
    assert {p: m for p, m in offenders.items() if m} == {}


def test_the_catalog_reaches_the_engine_only_through_its_public_modules():
    allowed = {"mmsearch.adapter", "mmsearch.images", "mmsearch.indexing", "mmsearch.plugins.base", "mmsearch.search.params",
               "mmsearch.text", "mmsearch.validation"}
    used = {
        path.relative_to(ROOT).as_posix(): sorted(m for m in imported_modules(path) if m.startswith("mmsearch") and m not in allowed)
        for path in sorted((ROOT / "catalog").rglob("*.py"))
    }
    assert {p: m for p, m in used.items() if m} == {}


def test_no_import_circles():
    tool = ROOT.parent / "shared" / "tools" / "import_cycles.py"  # the shared checker, beside the checkout
    assert tool.is_file(), f"{tool} is missing"
    run = subprocess.run([sys.executable, str(tool), str(ROOT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
