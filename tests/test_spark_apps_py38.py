"""spark_apps runs on managed clusters with Python 3.8 and no Airflow: enforce both.

1. ``ruff check --target-version py38``: ruff reports syntax newer than the target as errors
   (``match``, parenthesized context managers, ``except*``, ...); FA102 flags PEP 585/604
   annotations (``list[int]``, ``int | None``) that 3.8 evaluates at definition time; UP
   rules; pyflakes errors.
2. An AST walk for what no ruff rule covers: no ``airflow`` import, no PEP 585 subscripts or
   PEP 604 unions evaluated at runtime, no 3.9+ stdlib names.
3. A real Python 3.8 compiles every file, when one is installed (pyenv).
Each check is first shown to reject a file that breaks it, so a passing run means something.
"""

import ast
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "spark_apps"
RUFF_RULES = "E9,F,UP,FA102"
BUILTIN_GENERICS = {"list", "dict", "set", "frozenset", "tuple", "type"}
NEW_MODULES = {"zoneinfo", "graphlib", "tomllib"}  # 3.9+
NEW_ATTRIBUTES = {"removeprefix", "removesuffix", "cache", "bit_count"}  # 3.9+/3.10+ methods

BAD_SNIPPETS = {
    "match": "def f(v):\n    match v:\n        case 1:\n            return 1\n",
    "pep585_annotation": "def f(x: list[int]) -> None:\n    pass\n",
    "parenthesized_with": "with (open('a') as a, open('b') as b):\n    pass\n",
    "except_star": "try:\n    pass\nexcept* ValueError:\n    pass\n",
}
AST_BAD_SNIPPETS = {
    "airflow": "from airflow.sdk import dag\n",
    "airflow_plain": "import airflow.models\n",
    "runtime_pep585": "Vectors = list[float]\n",
    "runtime_pep604": "ok = isinstance(1, int | None)\n",
    "new_module": "import zoneinfo\n",
    "new_method": "x = 'ab'.removeprefix('a')\n",
}


def ruff():
    found = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if not found:
        pytest.fail("ruff is not installed (requirements-dev.txt)")
    return found


def run_ruff(*paths):
    return subprocess.run(
        [ruff(), "check", "--no-cache", "--isolated", "--target-version", "py38", "--select", RUFF_RULES, *paths],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ast_problems(source, filename="<snippet>"):
    """Python 3.8 / no-Airflow problems ruff does not report, as readable strings."""
    tree = ast.parse(source, filename)
    problems = []
    in_annotation = set()
    for node in ast.walk(tree):
        for annotation in _annotations(node):
            in_annotation.update(id(n) for n in ast.walk(annotation))
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            names = []
        for name in names:
            root = name.split(".")[0]
            if root == "airflow":
                problems.append(f"{where}: imports airflow")
            if root in NEW_MODULES:
                problems.append(f"{where}: imports {root} (Python 3.9+)")
        if id(node) in in_annotation:  # annotations are FA102's business
            continue
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in BUILTIN_GENERICS:
            problems.append(f"{where}: {node.value.id}[...] at runtime (Python 3.9+)")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            sides = (node.left, node.right)
            if any(isinstance(s, ast.Constant) and s.value is None for s in sides):
                problems.append(f"{where}: X | None at runtime (Python 3.10+)")
        if isinstance(node, ast.Attribute) and node.attr in NEW_ATTRIBUTES:
            problems.append(f"{where}: .{node.attr} (Python 3.9+)")
    return problems


def _annotations(node):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = node.args
        every = args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]
        yield from (a.annotation for a in every if a is not None and a.annotation is not None)
        if node.returns is not None:
            yield node.returns
    elif isinstance(node, ast.AnnAssign):
        yield node.annotation


def package_files():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 10, files
    return files


def test_ruff_py38_rejects_newer_syntax(tmp_path):
    for name, snippet in BAD_SNIPPETS.items():
        path = tmp_path / f"{name}.py"
        path.write_text(snippet)
        result = run_ruff(str(path))
        assert result.returncode != 0, f"ruff accepted {name}:\n{snippet}"


def test_ast_check_rejects_what_ruff_misses():
    for name, snippet in AST_BAD_SNIPPETS.items():
        assert ast_problems(snippet), f"the AST check accepted {name}: {snippet}"
    assert not ast_problems("from typing import List\nx: list[int] = []\nV = List[int]\n")


def test_spark_apps_passes_ruff_py38():
    result = run_ruff(str(PACKAGE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_spark_apps_has_no_airflow_import_nor_runtime_py39_features():
    problems = []
    for path in package_files():
        problems += ast_problems(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert not problems, "\n".join(problems)


def _python38():
    """A working Python 3.8 (pyenv shims exist even where 3.8 is not selected: try each)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
    candidates.append(shutil.which("python3.8"))
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 8))"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.stdout.strip() == "True":
            return candidate
    return None


def test_compiles_with_a_real_python38(tmp_path):
    python38 = _python38()
    if not python38:
        pytest.skip("no Python 3.8 interpreter on this machine (ruff and the AST check still ran)")
    bad = tmp_path / "bad.py"
    bad.write_text(BAD_SNIPPETS["match"])
    code = "import sys, py_compile\nfor p in sys.argv[1:]:\n    py_compile.compile(p, cfile=p + '.c', doraise=True)\n"

    def compile_all(paths):
        return subprocess.run(
            [python38, "-c", code, *map(str, paths)], check=False, capture_output=True, text=True, timeout=120
        )

    assert compile_all([bad]).returncode != 0
    copies = []
    for path in package_files():  # compile copies: no .pyc next to the sources
        copy = tmp_path / "src" / path.relative_to(REPO)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
        copies.append(copy)
    result = compile_all(copies)
    assert result.returncode == 0, result.stderr
