"""The package's architecture holds: layers, no import cycles, a cheap ``import seglab``, short files.

The layers are written down in ``docs/architecture.md`` and enforced by the import-linter
contracts in ``pyproject.toml`` (``[tool.importlinter]``); these tests run them on the working
tree, and check that the contracts really catch a broken layer on a copy of the package.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "seglab"
BIN = Path(sys.executable).parent  # the venv's scripts: lint-imports, seglab
MAX_LINES = 400  # the house rule for one Python file
HEAVY = ("torch", "torchvision", "scipy", "skimage", "tqdm")


def _lint_imports(src: Path, project: Path) -> subprocess.CompletedProcess[str]:
    """Run the venv's ``lint-imports`` on the seglab in ``src``, with the contracts of ``project``/pyproject.toml.

    ``src`` goes first on ``PYTHONPATH``, so the package checked is that one, never another installed copy.
    """
    exe = BIN / "lint-imports"
    assert exe.exists(), f"{exe} is missing: install the test extra (pip install -e '.[test]')"
    assert (project / "pyproject.toml").is_file()
    path = os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}  # wide, so no reported import is wrapped
    # No config argument: lint-imports reads pyproject.toml from its working directory.
    return subprocess.run([str(exe), "--no-cache"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {result.returncode}\n{result.stdout}\n{result.stderr}"


# --- the layer contracts ------------------------------------------------------------------------


def test_import_contracts_are_kept():
    """``lint-imports`` passes on the working tree's ``src/seglab`` with the contracts in pyproject.toml."""
    result = _lint_imports(SRC, REPO)
    assert result.returncode == 0, _output(result)
    assert "0 broken" in result.stdout and "BROKEN" not in result.stdout, _output(result)


#: (file to edit or create in the copy, text appended to it, what lint-imports must report)
BREAKS = {
    "upward import": ("core/errors.py", "import seglab.apps.cli\n",
                      ["seglab.core is not allowed to import seglab.apps", "seglab.core.errors -> seglab.apps.cli"]),
    "sibling import": ("models/registry.py", "import seglab.data.base\n",
                       ["seglab.models is not allowed to import seglab.data",
                        "seglab.models.registry -> seglab.data.base"]),
    "heavy import in ops": ("ops/tiling.py", "def _later():\n    import scipy.ndimage\n",
                            ["seglab.ops is not allowed to import scipy", "seglab.ops.tiling -> scipy"]),
    "package in no layer": ("server/__init__.py", '"""A new top-level package that no layer lists."""\n',
                            ["seglab.server"]),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_a_broken_layer_fails_the_contract(case, tmp_path):
    """A copy of the package with one forbidden import (or an unplaced package) fails lint-imports, naming it."""
    relative, text, expected = BREAKS[case]
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "seglab", ignore=shutil.ignore_patterns("__pycache__"))
    target = src / "seglab" / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a") as f:
        f.write("\n" + text)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")

    # The copy, not the installed package, is what a process with this PYTHONPATH imports.
    env = {**os.environ, "PYTHONPATH": str(src)}
    origin = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('seglab').origin)"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(origin) == src / "seglab" / "__init__.py"

    result = _lint_imports(src, tmp_path)
    assert result.returncode != 0, _output(result)
    assert "BROKEN" in result.stdout, _output(result)
    for phrase in expected:
        assert phrase in result.stdout, f"{phrase!r} not reported:\n{_output(result)}"


# --- no import cycles ---------------------------------------------------------------------------


def _graph() -> grimp.ImportGraph:
    # Imports under ``if TYPE_CHECKING:`` never run, so they cannot make an import-time cycle.
    return grimp.build_graph("seglab", exclude_type_checking_imports=True, cache_dir=None)


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One directed cycle ``[a, b, ..., a]`` in ``edges``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    for start in sorted(edges):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(edges[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


def test_no_cycle_between_sibling_packages():
    """For every package of seglab (seglab itself, seglab.models, ...), its children import each other acyclically.

    The children of a package are its direct subpackages and modules; child A depends on child B when
    any module in A (A itself or below it) imports any module in B, at module level or inside a
    function. At the top this is the layer graph: core, ops, models, data, ..., apps.
    """
    graph = _graph()
    packages = sorted(m for m in graph.modules if graph.find_children(m))
    for package in packages:
        children = sorted(graph.find_children(package))
        owner = {}
        for child in children:
            owner[child] = child
            for descendant in graph.find_descendants(child):
                owner[descendant] = child
        edges: dict[str, set[str]] = {child: set() for child in children}
        examples = {}
        for importer, importer_child in owner.items():
            for imported in graph.find_modules_directly_imported_by(importer):
                imported_child = owner.get(imported)
                if imported_child is not None and imported_child != importer_child:
                    edges[importer_child].add(imported_child)
                    examples.setdefault((importer_child, imported_child), f"{importer} -> {imported}")
        cycle = _find_cycle(edges)
        assert cycle is None, f"cycle among the children of {package}: " + "; ".join(
            examples[pair] for pair in itertools.pairwise(cycle))


def test_no_module_import_cycle():
    """No seglab module imports itself through other modules; in particular no two modules import each other.

    The module graph is every static import between seglab modules (module level or inside a
    function, ``TYPE_CHECKING`` imports excluded); it must have no directed cycle of any length, so
    every module can be imported first without meeting a half-initialised module.
    """
    graph = _graph()
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    mutual = sorted((a, b) for a in edges for b in edges[a] if a < b and a in edges.get(b, ()))
    assert not mutual, f"modules that import each other: {mutual}"
    cycle = _find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# --- a cheap import and command line ------------------------------------------------------------

#: Python that prints, as JSON, which of HEAVY the process has imported (by top-level name).
_REPORT_HEAVY = ("import json, sys\n"
                 f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))")


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)


def test_import_seglab_loads_no_heavy_dependency():
    result = _run_python("import seglab\n" + _REPORT_HEAVY)
    assert result.returncode == 0, _output(result)
    assert json.loads(result.stdout.splitlines()[-1]) == [], f"`import seglab` imported: {result.stdout}"


def test_seglab_help_loads_no_heavy_dependency():
    code = ("import runpy, sys\nsys.argv = ['seglab', '--help']\n"
            "try:\n    runpy.run_module('seglab', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n" + _REPORT_HEAVY)
    result = _run_python(code)
    assert result.returncode == 0, _output(result)
    assert "usage: seglab" in result.stdout
    assert json.loads(result.stdout.splitlines()[-1]) == [], f"`seglab --help` imported: {result.stdout}"


@pytest.mark.parametrize("command", [[str(BIN / "seglab"), "--help"], [sys.executable, "-m", "seglab", "--help"]],
                         ids=["seglab", "python -m seglab"])
def test_help_works(command):
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, _output(result)
    assert result.stdout.startswith("usage: seglab") and "quickstart" in result.stdout, _output(result)


def test_lazy_public_names_resolve():
    """Every name in ``seglab.__all__`` loads from the module ``seglab.__getattr__`` points it at."""
    result = _run_python("import seglab\nmissing = [n for n in seglab.__all__ if getattr(seglab, n, None) is None]\n"
                         "print(missing)")
    assert result.returncode == 0, _output(result)
    assert result.stdout.strip() == "[]", _output(result)


# --- the docs name what exists ---------------------------------------------------------------


def _resolves(dotted: str) -> bool:
    """``seglab.a.b.c`` names a module, or an attribute reached from the longest importable module prefix."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


def test_documented_module_paths_exist():
    """Every ``seglab.x.y`` in README.md and docs/*.md imports (a module, or a name in one)."""
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    stale = [f"{doc.name}: {ref}" for doc in docs
             for ref in sorted(set(re.findall(r"\bseglab(?:\.[A-Za-z_]\w*)+", doc.read_text())))
             if not _resolves(ref)]
    assert not stale, f"module paths that do not exist: {stale}"


def test_architecture_doc_names_real_files():
    """The files and folders docs/architecture.md names exist (under src/seglab, src or the repository root)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    planned = {"models/instance/"}  # named as the place for Mask R-CNN, not there yet
    named = set(re.findall(r"`([\w./-]+(?:\.py|\.toml|/))`", text)) - planned
    assert len(named) > 20
    missing = sorted(p for p in named if not any((base / p).exists() for base in (PACKAGE, SRC, REPO)))
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


# --- house rules --------------------------------------------------------------------------------


def test_python_files_are_at_most_400_lines():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50  # the package is really there
    counts = {path.relative_to(SRC).as_posix(): len(path.read_text().splitlines()) for path in files}
    offenders = {name: n for name, n in counts.items() if n > MAX_LINES}
    assert not offenders, f"files over {MAX_LINES} lines: " + ", ".join(f"{k} ({v})" for k, v in offenders.items())
