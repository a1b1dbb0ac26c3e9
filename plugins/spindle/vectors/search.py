"""Search the books for people: embed a query with the collection's own model, print the hits.

    python -m spindle.vectors.search "a detective story in foggy London" --k 10
    python -m spindle.vectors.search "a whale on a dark blue cover" --mode covers

``--mode text`` (alias ``books_text``) embeds the query with the sentence-transformers model the
collection was built with; ``--mode covers`` (alias ``books_covers``) with the text encoder of
its CLIP model. The model directory and fingerprint come from the collection's properties;
a model whose fingerprint differs from the one the vectors were made with is refused (its
vectors would live in another space).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from spindle.vectors.store import CollectionInfo, Hit, MilvusVectorStore, VectorStoreError, search

MODES = {"text": "books_text", "covers": "books_covers"}


class QueryModelError(VectorStoreError):
    """The query cannot be embedded with the collection's model."""


def model_dir_for(info: CollectionInfo, explicit: str | None) -> str:
    model_dir = explicit or info.prop("model_dir")
    if not model_dir:
        raise QueryModelError(f"collection {info.name!r} records no model directory: pass --model-dir")
    if not Path(model_dir).is_dir():
        raise QueryModelError(
            f"model directory {model_dir} (recorded by {info.name!r}) does not exist: pass --model-dir"
        )
    return model_dir


def check_fingerprint(info: CollectionInfo, model_dir: str) -> None:
    """The query model must be the model the vectors were made with."""
    from spark_apps.common.models import fingerprint

    expected = info.prop("model_fingerprint")
    actual = fingerprint(model_dir)
    if expected and actual != expected:
        raise QueryModelError(
            f"{model_dir} has fingerprint {actual}, but {info.name!r} was built with {expected}: "
            "a different model's query vectors cannot be compared with these vectors"
        )


def embed_text_query(model_dir: str, queries: Sequence[str]) -> np.ndarray:
    """The same loader and normalization as the embed_text job."""
    from spark_apps.common.models import load_sentence_transformer

    model = load_sentence_transformer(model_dir)
    return np.asarray(model.encode(list(queries), normalize_embeddings=True, convert_to_numpy=True))


def embed_clip_query(model_dir: str, queries: Sequence[str]) -> np.ndarray:
    """The text tower of the CLIP model the covers were embedded with."""
    try:
        from spark_apps.common.clip import encode_texts, load_clip
    except ImportError as err:
        raise QueryModelError(
            f"--mode covers needs spark_apps.common.clip (the CLIP cover job's model code): {err}"
        ) from None
    return np.asarray(encode_texts(load_clip(model_dir), list(queries)))


def embed_query(info: CollectionInfo, query: str, model_dir: str | None = None) -> np.ndarray:
    model_dir = model_dir_for(info, model_dir)
    check_fingerprint(info, model_dir)
    if (info.prop("model_kind") or "sentence-transformers") == "clip":
        return embed_clip_query(model_dir, [query])
    return embed_text_query(model_dir, [query])


def run_search(
    store: MilvusVectorStore, alias: str, query: str, k: int, model_dir: str | None = None
) -> tuple[CollectionInfo, list[Hit]]:
    info = store.collection_info(store.resolve_alias(alias))
    return info, search(store, alias, embed_query(info, query, model_dir), k)[0]


def format_hits(query: str, alias: str, info: CollectionInfo, hits: Sequence[Hit]) -> str:
    """One line per hit. The author column holds people's names (blank where a book has none)
    and is left out when no hit has one; the cover column likewise."""
    authors = any(hit.author for hit in hits)
    covers = any(hit.cover_url for hit in hits)
    lines = [
        f'Top {len(hits)} for "{query}" in {alias} -> {info.name}',
        f"(model {info.prop('model')}, version {info.prop('version')}; score = cosine similarity)",
        f"{'rank':>4}  {'score':>6}  {'title':<40}  "
        + (f"{'author':<28}  " if authors else "")
        + f"{'year':>4}"
        + ("  cover" if covers else ""),
    ]
    for hit in hits:
        lines.append(
            f"{hit.rank:>4}  {hit.score:6.3f}  {_cut(hit.title, 40):<40}  "
            + (f"{_cut(hit.author, 28, ''):<28}  " if authors else "")
            + f"{hit.year if hit.year is not None else '-':>4}"
            + (f"  {hit.cover_url or '-'}" if covers else "")
        )
    return "\n".join(line.rstrip() for line in lines)


def _cut(text: str | None, width: int, missing: str = "-") -> str:
    text = (text or missing).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def open_store(uri: str | None = None) -> MilvusVectorStore:
    """An explicit ``uri`` (no token) as is; else the ``spindle_milvus`` connection or the
    defaults (:class:`~spindle.vectors.hook.MilvusHook`; that needs Airflow's configuration)."""
    if uri:
        return MilvusVectorStore(uri)
    from spindle.vectors.hook import MilvusHook

    quiet_logs()  # importing Airflow set up INFO logging to stdout: keep the command's output readable
    endpoint = MilvusHook().endpoint()
    return MilvusVectorStore(endpoint["uri"], token=endpoint["token"], db_name=endpoint["db_name"])


def quiet_logs(level: int = logging.WARNING) -> None:
    logging.getLogger().setLevel(level)
    for name in ("airflow", "milvus_lite", "faiss", "pymilvus"):
        logging.getLogger(name).setLevel(level)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m spindle.vectors.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("query", help="what to look for, in words")
    parser.add_argument("--k", type=int, default=10, help="number of hits (default 10)")
    parser.add_argument(
        "--mode", choices=sorted(MODES), default="text", help="text: book texts; covers: cover images (CLIP)"
    )
    parser.add_argument("--alias", help="alias to search (default: books_text / books_covers by --mode)")
    parser.add_argument("--model-dir", help="query model directory (default: the one the collection recorded)")
    parser.add_argument(
        "--uri",
        help="milvus-lite .db path or server URI (default: connection spindle_milvus, "
        "env SPINDLE_MILVUS_URI, $SPINDLE_HOME/milvus/spindle.db)",
    )
    parser.add_argument("--json", action="store_true", help="print the hits as JSON")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error("--k must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    alias = args.alias or MODES[args.mode]
    try:
        with open_store(args.uri) as store:
            info, hits = run_search(store, alias, args.query, args.k, args.model_dir)
    except VectorStoreError as err:
        print(f"search: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"alias": alias, "collection": info.name, "hits": [asdict(h) for h in hits]}, indent=2))
    else:
        print(format_hits(args.query, alias, info, hits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
