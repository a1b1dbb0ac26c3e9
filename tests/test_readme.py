"""README.md's commands and the docs' links stay true to the tree.

From README.md's fenced ``bash`` blocks (backslash continuations joined, comments dropped, split
at ``&&``, ``||``, ``;`` and ``|``):

- ``scripts/X`` run as a command exists and is executable; one that is sourced (``. X``) or
  named anywhere else exists; ``python path.py`` names an existing file;
- ``python -m module`` resolves (``importlib.util.find_spec`` with the repository root and
  ``plugins/`` on the path, as ``scripts/env.sh`` sets it), and ``module --help`` exits 0;
- ``airflow dags test|trigger DAG -c '{json}'``: the JSON parses, DAG is a DAG of ``dags/`` and
  every key is one of its params (read from Airflow's DagBag, as tests/airflow does), and the
  values pass the params' schemas.

Every relative link ``[..](path)`` in README.md and docs/*.md points at an existing file (and
an ``#anchor`` at a heading of it). Each check is first shown to catch a broken snippet.
Imports, ``--help`` and the DagBag run in subprocesses with a throw-away ``AIRFLOW_HOME``: this
test's process never imports Airflow.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
SHELL_LANGS = {"bash", "sh", "shell"}
SEPARATORS = set("&|;")


# --------------------------------------------------------------------------- extraction
def fenced_blocks(markdown: str, langs: set[str] = SHELL_LANGS) -> list[str]:
    """Bodies of the fenced code blocks whose info string is one of ``langs``."""
    blocks, body, inside = [], [], None
    for line in markdown.splitlines():
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if inside is None and fence:
            inside = (fence.group(1), fence.group(2).lower())
            body = []
        elif inside is not None and line.strip().startswith(inside[0]) and not line.strip().strip(inside[0][0]):
            if inside[1] in langs:
                blocks.append("\n".join(body))
            inside = None
        elif inside is not None:
            body.append(line)
    return blocks


def commands(block: str) -> list[list[str]]:
    """Simple commands of a shell block: token lists without leading ``VAR=value`` assignments."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.commenters = "#"
        current: list[str] = []
        for token in [*lexer, ";"]:
            if set(token) <= set("&|;<>()") and SEPARATORS & set(token):
                while current and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", current[0]):
                    current.pop(0)
                if current:
                    out.append(current)
                current = []
            else:
                current.append(token)
    return out


@dataclass
class Named:
    """What a document's commands name."""

    run_scripts: set[str] = field(default_factory=set)  # run as commands: must be executable
    files: set[str] = field(default_factory=set)  # must exist
    modules: set[str] = field(default_factory=set)  # python -m
    dag_confs: list[tuple[str, str]] = field(default_factory=list)  # (dag_id, raw -c value)


def named_in(markdown: str) -> Named:
    named = Named()
    for block in fenced_blocks(markdown):
        for cmd in commands(block):
            head, args = cmd[0], cmd[1:]
            if re.match(r"^(\./)?scripts/", head):
                named.run_scripts.add(head.removeprefix("./"))
            elif head in (".", "source") and args:
                named.files.add(args[0])
            elif re.match(r"^python(3(\.\d+)?)?$", head) and args:
                if args[0] == "-m" and len(args) > 1:
                    named.modules.add(args[1])
                elif args[0].endswith(".py"):
                    named.files.add(args[0])
            elif head == "airflow" and args[:1] == ["dags"] and len(args) > 2 and args[1] in ("test", "trigger"):
                for flag, value in itertools.pairwise(args):
                    if flag in ("-c", "--conf"):
                        named.dag_confs.append((args[2], value))
            for token in args:
                if re.match(r"^(\./)?scripts/[\w./-]+$", token):
                    named.files.add(token.removeprefix("./"))
    return named


# --------------------------------------------------------------------------- checks (pure)
def script_problems(named: Named, root: Path = REPO) -> list[str]:
    problems = []
    for name in sorted(named.run_scripts):
        path = root / name
        if not path.is_file():
            problems.append(f"{name}: no such script")
        elif not os.access(path, os.X_OK):
            problems.append(f"{name}: not executable")
    for name in sorted(named.files):
        if not (root / name).is_file():
            problems.append(f"{name}: no such file")
    return problems


def conf_problems(named: Named, dag_params: dict[str, set[str]]) -> list[str]:
    problems = []
    for dag_id, raw in named.dag_confs:
        try:
            conf = json.loads(raw)
        except ValueError as err:
            problems.append(f"{dag_id} -c {raw}: not JSON ({err})")
            continue
        if not isinstance(conf, dict):
            problems.append(f"{dag_id} -c {raw}: not a JSON object")
        elif dag_id not in dag_params:
            problems.append(f"{dag_id}: no such DAG in dags/")
        else:
            problems += [f"{dag_id} -c: {key!r} is not a param" for key in sorted(set(conf) - dag_params[dag_id])]
    return problems


def github_anchor(heading: str) -> str:
    """GitHub's id of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    return {github_anchor(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.MULTILINE)}


def link_problems(doc: Path, markdown: str | None = None) -> list[str]:
    markdown = doc.read_text(encoding="utf-8") if markdown is None else markdown
    prose = re.sub(r"^\s*```.*?^\s*```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    problems = []
    for target in re.findall(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        where = f"{doc.name}: ({target})"
        if not path.exists():
            problems.append(f"{where}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path.read_text(encoding="utf-8")):
            problems.append(f"{where}: no heading #{fragment} in {path.name}")
    return problems


def layout_problems(markdown: str, root: Path = REPO) -> list[str]:
    """The README's Layout block against the tree: every DAG file, script and doc is named in
    it, and every top-level entry it starts a line with exists."""
    section = markdown.split("## Layout", 1)[1] if "## Layout" in markdown else ""
    match = re.search(r"^```[^\n]*\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    block = match.group(1) if match else ""
    words = set(re.findall(r"[\w.-]+", block))
    problems = []
    for folder, pattern, name_of in (
        ("dags", "*.py", lambda f: f.stem),
        ("scripts", "*", lambda f: f.name),
        ("docs", "*.md", lambda f: f.name),
    ):
        for path in sorted((root / folder).glob(pattern)):
            if path.is_file() and name_of(path) not in words:
                problems.append(f"Layout does not name {folder}/{path.name}")
    for line in block.splitlines():
        for entry in re.findall(r"[\w.-]+(?:/[\w.-]+)*/?", line.split("  ")[0]) if line[:1].strip() else []:
            if not (root / entry).exists():
                problems.append(f"Layout names {entry}, which does not exist")
    return problems


# --------------------------------------------------------------------------- subprocess helpers
def _env(tmp: Path) -> dict[str, str]:
    """The caller's environment minus Airflow's settings, plus a throw-away Airflow home and the
    paths ``scripts/env.sh`` puts on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
    env.update(
        {
            "AIRFLOW_HOME": str(tmp / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    return env


_FIND_SPECS = """
import importlib.util, json, sys
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = importlib.util.find_spec(name) is not None
    except Exception as err:  # a parent package that does not import
        out[name] = False
print(json.dumps(out))
"""

_DAG_PARAMS = """
import copy, json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
confs = json.loads(sys.argv[2])
out = {"errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
       "params": {d: sorted(dag.params.keys()) for d, dag in bag.dags.items()}, "invalid": []}
for dag_id, conf in confs:
    if dag_id in bag.dags and isinstance(conf, dict) and set(conf) <= set(bag.dags[dag_id].params.keys()):
        params = copy.deepcopy(bag.dags[dag_id].params)
        try:
            params.update(conf)  # validates each value as it is set
            params.validate()
        except Exception as err:
            out["invalid"].append(f"{dag_id} -c {json.dumps(conf)}: {str(err).splitlines()[0]}")
print(json.dumps(out))
"""


def _python(code_or_args: list[str], env: dict[str, str], timeout: int = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *code_or_args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def find_specs(modules: set[str], env: dict[str, str]) -> dict[str, bool]:
    done = _python(["-c", _FIND_SPECS, *sorted(modules)], env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def dag_params(named: Named, env: dict[str, str]) -> tuple[dict[str, set[str]], list[str]]:
    """Params of the DAGs the confs name ({dag_id: keys}) and problems (import errors, values a
    param's schema refuses). DAG files are named after their DAG ids; an unknown id loads all."""
    files = {REPO / "dags" / f"{dag_id}.py" for dag_id, _ in named.dag_confs}
    folder = files.pop() if len(files) == 1 and next(iter(files)).is_file() else REPO / "dags"
    confs = []
    for dag_id, raw in named.dag_confs:
        try:
            confs.append([dag_id, json.loads(raw)])
        except ValueError:
            pass
    done = _python(["-c", _DAG_PARAMS, str(folder), json.dumps(confs)], env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    problems = [f"{path}: import error {err}" for path, err in result["errors"].items()] + result["invalid"]
    return {d: set(keys) for d, keys in result["params"].items()}, problems


# --------------------------------------------------------------------------- the checks fail when they should
BROKEN = """
Intro with a [missing doc](docs/no-such-file.md), a [bad anchor](README.md#no-such-heading),
a [fine one](#usage) and an [external](https://example.org/x).

## Usage

```bash
. scripts/no_such_env.sh
scripts/no_such_script.sh --flag   # a comment
scripts/init_local_secrets.py /tmp/x && python bench/no_such_bench.py
SPINDLE_X=1 python -m spindle.no_such_module --help | tail -1
airflow dags test spindle_nightly_books -c '{"limit": 5, "no_such_param": 1}'
airflow dags test spindle_nightly_books -c '{not json}'
airflow dags trigger no_such_dag -c '{"limit": 5}'
```

```text
scripts/not_a_command.sh
```
"""


def test_extractor_reads_commands_as_a_shell_would():
    block = fenced_blocks(BROKEN)[0]
    cmds = commands(block)
    assert ["scripts/no_such_script.sh", "--flag"] in cmds, "comments and assignments dropped"
    assert ["scripts/init_local_secrets.py", "/tmp/x"] in cmds and ["python", "bench/no_such_bench.py"] in cmds
    assert ["python", "-m", "spindle.no_such_module", "--help"] in cmds and ["tail", "-1"] in cmds
    assert len(fenced_blocks(BROKEN)) == 1, "only shell blocks"
    assert commands("a \\\n  --b c; d") == [["a", "--b", "c"], ["d"]]


def test_each_check_catches_a_broken_snippet(tmp_path):
    named = named_in(BROKEN)
    assert script_problems(named) == [
        "scripts/init_local_secrets.py: not executable",  # exists, but is run with python
        "scripts/no_such_script.sh: no such script",
        "bench/no_such_bench.py: no such file",
        "scripts/no_such_env.sh: no such file",
    ]
    assert "scripts/not_a_command.sh" not in named.run_scripts | named.files
    params = {"spindle_nightly_books": {"limit", "num_workers"}}
    problems = conf_problems(named, params)
    assert problems[0] == "spindle_nightly_books -c: 'no_such_param' is not a param"
    assert problems[1].startswith("spindle_nightly_books -c {not json}: not JSON")
    assert problems[2] == "no_such_dag: no such DAG in dags/"
    doc = tmp_path / "README.md"
    doc.write_text(BROKEN)
    assert link_problems(doc) == [
        "README.md: (docs/no-such-file.md): no such file",
        "README.md: (README.md#no-such-heading): no heading #no-such-heading in README.md",
    ]
    assert find_specs({"spindle.no_such_module", "spindle.evaluation"}, _env(tmp_path)) == {
        "spindle.no_such_module": False,
        "spindle.evaluation": True,
    }


def test_layout_check_catches_a_stale_list(tmp_path):
    for folder, name in (("dags", "spindle_new_dag.py"), ("scripts", "new.sh"), ("docs", "new.md")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_text("")
    layout = "## Layout\n\n```\ndags/  spindle_old_dag\nscripts/  new.sh\ndags/gone/  a folder\n```\n"
    assert layout_problems(layout, tmp_path) == [
        "Layout does not name dags/spindle_new_dag.py",
        "Layout does not name docs/new.md",
        "Layout names dags/gone/, which does not exist",
    ]


# --------------------------------------------------------------------------- the README as it is
@pytest.fixture(scope="module")
def readme() -> Named:
    return named_in(README.read_text(encoding="utf-8"))


def test_readme_scripts_exist_and_are_executable(readme):
    assert readme.run_scripts, "the extractor found no scripts in README.md"
    assert script_problems(readme) == []


def test_readme_python_modules_resolve_and_answer_help(readme, tmp_path):
    assert readme.modules, "the extractor found no `python -m` commands in README.md"
    env = _env(tmp_path)
    specs = find_specs(readme.modules, env)
    assert [m for m, found in specs.items() if not found] == []
    with ThreadPoolExecutor(max_workers=4) as pool:  # a handful, side by side
        results = dict(
            zip(sorted(readme.modules), pool.map(lambda m: _python(["-m", m, "--help"], env), sorted(readme.modules)))
        )
    failed = {m: r.stderr[-800:] for m, r in results.items() if r.returncode != 0}
    assert failed == {}


def test_readme_dag_confs_are_params_of_their_dags(readme, tmp_path):
    assert readme.dag_confs, "the extractor found no `airflow dags test -c` in README.md"
    bad = ("spindle_nightly_books", '{"limit": -1}')  # in the same DagBag run: the value check can fail
    with_bad = Named(dag_confs=[*readme.dag_confs, bad])
    params, problems = dag_params(with_bad, _env(tmp_path))
    assert problems == [
        'spindle_nightly_books -c {"limit": -1}: Invalid input for param limit: -1 is less than the minimum of 1'
    ]
    assert conf_problems(readme, params) == []


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_point_at_existing_files(doc):
    assert link_problems(doc) == []


def test_readme_layout_matches_the_tree():
    assert layout_problems(README.read_text(encoding="utf-8")) == []
