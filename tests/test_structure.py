"""The package's shape: no import circle, plain modules free of the trainer, small files and functions."""

import ast
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "torchrec_fusion"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: Dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, top_level_only: bool) -> Set[str]:
    """The torchrec_fusion modules ``path`` imports (module-level statements only, or every one)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    out: Set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("torchrec_fusion")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("torchrec_fusion"):
                out.add(base)
                out |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
    return {m for m in out if m in MODULES and m != this}


def _external_imports(path: Path) -> Set[str]:
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def test_no_import_circle_between_modules() -> None:
    """The graph of module-level imports (what runs at import time) has no cycle: a package's
    ``__init__`` may import its members, but a member importing from its package's ``__init__``
    (which imports it back) is a circle, and so is any longer loop."""
    graph = {m: _imports(p, top_level_only=True) for m, p in MODULES.items()}
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("seed", [0, 1])
def test_every_module_imports_in_any_order(seed: int) -> None:
    names = sorted(m for m in MODULES if not m.endswith("__main__"))
    random.Random(seed).shuffle(names)
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("package", ["modules", "fusion"])
def test_plain_modules_never_import_the_trainer(package: str) -> None:
    """``modules/`` and ``fusion/`` are plain modules: not even a late import of training/ or distributed/."""
    for name, path in MODULES.items():
        if not name.startswith(f"torchrec_fusion.{package}"):
            continue
        bad = sorted(m for m in _imports(path, top_level_only=False)
                     if m.startswith(("torchrec_fusion.training", "torchrec_fusion.distributed")))
        assert not bad, f"{name} imports {bad}"
        dist = sorted(m for m in _external_imports(path) if m.startswith("torch.distributed"))
        assert not dist, f"{name} imports {dist}"


def test_evaluation_does_not_import_fusion() -> None:
    """Metrics are upstream of fusion (fusion fits weights with them), never the other way round."""
    for name, path in MODULES.items():
        if name.startswith("torchrec_fusion.evaluation"):
            bad = sorted(m for m in _imports(path, top_level_only=False) if m.startswith("torchrec_fusion.fusion"))
            assert not bad, f"{name} imports {bad}"


def test_files_and_functions_are_small() -> None:
    too_long = []
    for path in MODULES.values():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, "\n".join(too_long)


def test_the_readme_layout_table_names_every_folder() -> None:
    readme = (ROOT / "README.md").read_text()
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    missing = [f for f in folders if f"`torchrec_fusion/{f}/`" not in readme]
    assert not missing, f"README layout table lacks {missing}"
    assert os.path.isdir(PACKAGE / "commands")
