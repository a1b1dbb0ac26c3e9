"""The repository's formatter and its error-level lint, as CONTRIBUTING.md runs them: code that
``ruff format`` would change, or that has syntax errors or pyflakes errors, fails here."""

import subprocess
import sys

from tests.support.paths import REPO

RUFF = [sys.executable, "-m", "ruff"]


def _ruff(*args: str, cwd=REPO, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RUFF, *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120)


def test_the_check_rejects_unformatted_code():
    badly = _ruff("format", "--check", "--stdin-filename", "bad.py", "-", stdin="x = {  'a':1 }\n")
    assert badly.returncode == 1
    assert _ruff("format", "--check", "--stdin-filename", "ok.py", "-", stdin='x = {"a": 1}\n').returncode == 0


def test_the_repository_is_formatted():
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, f"run `ruff format .`:\n{result.stdout}{result.stderr}"


def test_no_syntax_or_pyflakes_errors():
    result = _ruff("check", "--select", "E9,F", ".")
    assert result.returncode == 0, result.stdout + result.stderr
