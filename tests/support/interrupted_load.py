"""``python -m tests.support.interrupted_load``: load one embeddings output into milvus-lite with
``spindle.vectors.loading.load_embeddings`` (what the ``load_vectors`` task runs), optionally
stopping half way so that a fault test can SIGKILL it there.

The store's ``upsert`` is counted, not changed: after each batch this prints ``UPSERTED <n>``;
with ``--pause-after K`` it prints ``PAUSED`` after batch K and waits for the signal that kills
it (the test sends SIGKILL: no cleanup runs, as when the OS or the OOM killer ends a worker).
Without it, the load runs to the end and prints ``RESULT <json>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def start_loader(
    db: Path,
    embeddings: str,
    books: str | None,
    version: str,
    batch_size: int,
    pause_after: int = 0,
    backend: str = "local",
) -> subprocess.Popen:
    """This command in a subprocess (stdout and stderr merged, text), for a test to read and kill."""
    command = [sys.executable, "-m", "tests.support.interrupted_load", str(embeddings), "--uri", str(db)]
    command += ["--version", version, "--batch-size", str(batch_size), "--pause-after", str(pause_after)]
    if books:
        command += ["--books", str(books)]
    if backend != "local":
        command += ["--backend", backend]
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'plugins'}"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when_paused(loader: subprocess.Popen) -> None:
    """SIGKILL the loader once it says PAUSED; fails if it ended first."""
    for line in loader.stdout:
        if line.strip() == "PAUSED":
            loader.kill()
            if loader.wait(timeout=30) != -9:
                raise AssertionError(f"the loader did not die of SIGKILL: {loader.returncode}")
            return
    raise AssertionError(f"the loader ended before pausing: exit {loader.wait()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.interrupted_load")
    parser.add_argument("embeddings")
    parser.add_argument("--books")
    parser.add_argument("--uri", required=True, help="milvus-lite .db path")
    parser.add_argument("--alias", default="books_text")
    parser.add_argument("--version", required=True)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--pause-after", type=int, default=0, help="batches to upsert before pausing (0: never)")
    parser.add_argument("--backend", default="local", help="read bucket URIs as load_vectors does on this lane")
    args = parser.parse_args(argv)

    from spindle.vectors.loading import load_embeddings
    from spindle.vectors.store import MilvusVectorStore
    from spindle.backends.config import settings_variable, validate_settings
    from spindle.warehouse import warehouse_for

    filesystem = books_filesystem = None
    embeddings, books = args.embeddings, args.books
    if args.backend != "local":  # as load_vectors reads a cloud lane's output: the backend's warehouse
        variable = f"AIRFLOW_VAR_{settings_variable(args.backend).upper()}"
        settings = validate_settings(args.backend, os.environ[variable], variable)
        warehouse = warehouse_for(args.backend, settings)
        filesystem, embeddings = warehouse.locate(embeddings)
        if books:
            books_filesystem, books = warehouse.locate(books)

    batches = 0
    upsert = MilvusVectorStore.upsert

    def counted_upsert(self, name, rows):
        nonlocal batches
        done = upsert(self, name, rows)
        batches += 1
        print(f"UPSERTED {batches}", flush=True)
        if batches == args.pause_after:
            print("PAUSED", flush=True)
            while True:  # until the test's SIGKILL
                time.sleep(60)
        return done

    MilvusVectorStore.upsert = counted_upsert
    with MilvusVectorStore(args.uri) as store:
        result = load_embeddings(
            store,
            embeddings,
            alias=args.alias,
            version=args.version,
            books_path=books,
            batch_size=args.batch_size,
            filesystem=filesystem,
            books_filesystem=books_filesystem,
        )
    print("RESULT " + json.dumps(result.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
