"""Checks what Spindle needs from the machine before anything is installed.

Run by scripts/bootstrap.sh (so by scripts/demo.sh and scripts/test.sh) with the Python that
makes (or made) .venv, before the venv has its packages: the standard library only, and syntax
that Python 3.6+ parses, so that a wrong Python gets a message instead of a traceback.

- Python: 3.11, the version requirements.txt and constraints.txt are resolved for;
- Java: the ``java`` Spark runs ($JAVA_HOME/bin/java, else the one on PATH), at least the
  version the pinned Spark needs (Spark 4: Java 17; Spindle is tested with 17);
- memory: how much is free (a warning only).

One message per problem; exit status 1 when Spindle cannot run here, 0 otherwise (warnings
included). ``SPINDLE_SKIP_PREFLIGHT=1`` makes scripts/bootstrap.sh skip this.
"""

import os
import re
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_NEEDED = (3, 11)
JAVA_TESTED = 17
# Below this much free memory the demo (Airflow, a Spark master, workers of 1 GiB, executors
# loading models) is likely to be slow or killed.
MEMORY_WANTED_GIB = 3.0

failures = []
warnings = []
found = []


def pinned_spark():
    """The pyspark version requirements.txt pins, e.g. '4.2.0' (None if it cannot be read)."""
    try:
        with open(os.path.join(REPO, "requirements.txt")) as handle:
            text = handle.read()
    except OSError:
        return None
    match = re.search(r"^pyspark==([0-9][^\s;#]*)", text, re.MULTILINE)
    return match.group(1) if match else None


def java_needed(spark):
    """The oldest Java the given Spark version runs on."""
    try:
        major = int(spark.split(".")[0])
    except (AttributeError, ValueError):
        return JAVA_TESTED
    return 17 if major >= 4 else 8


def check_python():
    version = sys.version_info
    text = "{}.{}.{}".format(*version[:3])
    if tuple(version[:2]) == PYTHON_NEEDED:
        found.append(f"Python {text}")
        return
    needed = "{}.{}".format(*PYTHON_NEEDED)
    message = (
        f"Python {needed} is needed (the pinned requirements are resolved for it);"
        f" found Python {text} at {sys.executable}."
    )
    if sys.prefix != getattr(sys, "base_prefix", sys.prefix):
        message += f" This is a virtualenv ({sys.prefix}): remove it and rerun with Python {needed}."
    message += (
        f" Install Python {needed} (e.g. `brew install python@{needed}`,"
        f" `apt-get install python{needed} python{needed}-venv`, or pyenv); scripts/bootstrap.sh"
        f" picks python{needed} from PATH, or set SPINDLE_PYTHON=/path/to/python{needed}."
    )
    failures.append(message)


def java_executable():
    """(path, where it came from), or (None, what was looked at): the java Spark's scripts use."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        path = os.path.join(java_home, "bin", "java")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path, "$JAVA_HOME"
        return None, f"JAVA_HOME={java_home} has no bin/java"
    path = shutil.which("java")
    if path:
        return path, "PATH"
    return None, "no `java` on PATH and JAVA_HOME is not set"


def java_version(path):
    """(major, version text) from ``java -version``, or (None, its output when it failed)."""
    try:
        proc = subprocess.Popen(
            [path, "-version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True
        )
        output, _ = proc.communicate(timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        return None, str(err)
    # 'openjdk version "17.0.15" 2025-04-15', 'java version "1.8.0_402"', 'openjdk version "21" ...'
    match = re.search(r'version "([^"]+)"', output)
    if proc.returncode != 0 or not match:
        return None, output.strip().splitlines()[0] if output.strip() else f"exit status {proc.returncode}"
    text = match.group(1)
    parts = re.split(r"[._+-]", text)
    try:
        major = int(parts[1]) if parts[0] == "1" and len(parts) > 1 else int(parts[0])
    except ValueError:
        return None, f"unrecognised version {text!r}"
    return major, text


def check_java():
    spark = pinned_spark()
    needed = java_needed(spark)
    spark_text = f"Spark {spark} (pyspark in requirements.txt)" if spark else "Spark"
    install = (
        f"Install Java {JAVA_TESTED} (e.g. `brew install openjdk@{JAVA_TESTED}`,"
        f" `apt-get install openjdk-{JAVA_TESTED}-jre-headless`) and put it on PATH or set JAVA_HOME."
    )
    path, where = java_executable()
    if path is None:
        failures.append(f"Java {needed}+ is needed by {spark_text}: {where}. {install}")
        return
    major, text = java_version(path)
    if major is None:
        failures.append(
            f"Java {needed}+ is needed by {spark_text}: `{path} -version` (from {where}) failed: {text}. {install}"
        )
        return
    if major < needed:
        failures.append(
            f"Java {needed}+ is needed by {spark_text}; found Java {text} at {path} (from {where}). {install}"
        )
        return
    found.append(f"Java {text} ({path})")
    if major != JAVA_TESTED:
        warnings.append(
            f"Java {text} at {path}: {spark_text} runs on Java {needed}+,"
            f" but Spindle is tested with Java {JAVA_TESTED}."
        )


def free_memory_bytes():
    """Memory available to new processes, in bytes, or None when it cannot be told here."""
    if sys.platform == "darwin":
        # vm_stat: free + inactive + speculative pages can be handed out without swapping.
        try:
            output = subprocess.check_output(["vm_stat"], universal_newlines=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        size = re.search(r"page size of (\d+) bytes", output)
        pages = 0
        for name in ("Pages free", "Pages inactive", "Pages speculative"):
            match = re.search(rf"^{name}:\s+(\d+)", output, re.MULTILINE)
            if match:
                pages += int(match.group(1))
        return pages * int(size.group(1)) if size and pages else None
    try:
        # Linux: free pages (page cache that could be reclaimed is not counted: a lower bound).
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory():
    free = free_memory_bytes()
    if free is None:
        return
    gib = free / float(1 << 30)
    found.append(f"{gib:.1f} GiB memory free")
    if gib < MEMORY_WANTED_GIB:
        warnings.append(
            f"only {gib:.1f} GiB of memory is free; the demo (Airflow, a Spark master and workers,"
            f" executors loading models) wants about {MEMORY_WANTED_GIB:.0f} GiB. It may run slowly or"
            " be killed: close other programs, or run DAGs with fewer workers (num_workers=1)."
        )


def main():
    check_python()
    check_java()
    check_memory()
    for message in failures:
        sys.stderr.write(f"preflight: ERROR: {message}\n")
    for message in warnings:
        sys.stderr.write(f"preflight: warning: {message}\n")
    if failures:
        sys.stderr.write(
            f"preflight: {len(failures)} problem(s) above must be fixed first"
            " (SPINDLE_SKIP_PREFLIGHT=1 skips these checks).\n"
        )
        return 1
    print(">> preflight: " + ", ".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
