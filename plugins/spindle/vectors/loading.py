"""Embeddings Parquet (+ the books Parquet for the payload) -> a versioned Milvus collection.

Memory: the vectors are the big part (384 or 512 floats a row), so the embeddings are read as
record batches and upserted batch by batch, never as a whole table. Of the books only the few
payload columns are read (id, title, author, year, covers), a small Arrow table that each
vector batch is joined with.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from spindle.vectors.store import MilvusVectorStore, VectorStoreError, collection_name

log = logging.getLogger(__name__)

#: Open Library's covers service: the URL of a cover from its id.
COVER_URL = "https://covers.openlibrary.org/b/id/{cover_id}-L.jpg"
#: Book columns that may hold people's names, best first. Open Library author keys
#: (``author_keys``) are never shown: a book without a name has an empty author.
AUTHOR_COLUMNS = ("authors", "author", "by_statement")


@dataclass
class LoadResult:
    alias: str
    collection: str
    created: bool
    rows_read: int
    rows_upserted: int
    rows_skipped_no_vector: int
    rows_without_book: int
    rows_in_collection: int
    dim: int
    model: str | None
    model_fingerprint: str | None
    previous_collection: str | None
    alias_switched: bool
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_parquet(path: str | Path, filesystem: pafs.FileSystem | None = None) -> ds.Dataset:
    """A Parquet file or a Spark output folder (part files; _SUCCESS and .crc are ignored) on
    ``filesystem`` (default: local), e.g. a warehouse's ``S3FileSystem`` with a ``bucket/key``
    path (:meth:`spindle.warehouse.Warehouse.locate`)."""
    filesystem = filesystem or pafs.LocalFileSystem()
    if filesystem.get_file_info(str(path)).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no Parquet at {path}")
    return ds.dataset(str(path), filesystem=filesystem, format="parquet", exclude_invalid_files=True)


def open_table(path: str | Path, filesystem: pafs.FileSystem | None = None) -> ds.Dataset:
    """Like :func:`open_parquet`, but a ``.csv`` file (with a header) is read as CSV: a small
    table of books such as ``data/samples/covers/covers.csv`` can be the payload."""
    if str(path).lower().endswith(".csv"):
        filesystem = filesystem or pafs.LocalFileSystem()
        if filesystem.get_file_info(str(path)).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"no CSV at {path}")
        return ds.dataset(str(path), filesystem=filesystem, format="csv")
    return open_parquet(path, filesystem)


class NoVectorsError(VectorStoreError):
    """The embeddings have rows but not one vector (e.g. every cover image failed)."""


def first_row_meta(embeddings: ds.Dataset) -> dict[str, Any]:
    """Dimension, model and fingerprint, from the first row that has a vector."""
    columns = [c for c in ("vector", "model", "model_fingerprint") if c in embeddings.schema.names]
    for batch in embeddings.to_batches(columns=columns, batch_size=256):
        for row in batch.to_pylist():
            if row.get("vector"):
                return {
                    "dim": len(row["vector"]),
                    "model": row.get("model"),
                    "model_fingerprint": row.get("model_fingerprint"),
                }
    raise NoVectorsError("the embeddings hold no vector: nothing to load")


def book_payload(books_path: str | Path | None, filesystem: pafs.FileSystem | None = None) -> pa.Table | None:
    """``id, title, author, year, cover_url`` of every book: only these columns are read."""
    if not books_path:
        return None
    books = open_table(books_path, filesystem)
    names = set(books.schema.names)
    wanted = ["id"] + [c for c in ("title", "publish_year", "cover_ids", *AUTHOR_COLUMNS) if c in names]
    table = books.to_table(columns=wanted).combine_chunks()
    return pa.table(
        {
            "id": table["id"],
            "title": table["title"] if "title" in names else pa.nulls(len(table), pa.string()),
            "author": _authors(table),
            "year": table["publish_year"].cast(pa.int64())
            if "publish_year" in names
            else pa.nulls(len(table), pa.int64()),
            "cover_url": _cover_urls(table),
        }
    )


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return pc.binary_join(column.cast(pa.list_(pa.string())), ", ")
    return column.cast(pa.string())


def _authors(table: pa.Table) -> pa.ChunkedArray:
    """People's names when the books carry them (prepare_books' ``author``), else null."""
    result = pa.chunked_array([pa.nulls(len(table), pa.string())])
    for name in AUTHOR_COLUMNS[::-1]:  # the best present column wins
        if name in table.column_names:
            text = _as_text(table[name])
            result = pc.if_else(pc.and_(pc.is_valid(text), pc.not_equal(text, "")), text, result)
    return result


def _cover_urls(table: pa.Table) -> pa.ChunkedArray:
    if "cover_ids" not in table.column_names:
        return pa.chunked_array([pa.nulls(len(table), pa.string())])
    urls = [COVER_URL.format(cover_id=ids[0]) if ids else None for ids in table["cover_ids"].to_pylist()]
    return pa.chunked_array([pa.array(urls, pa.string())])


class BookIndex:
    """Book payload rows by id: one dict of positions, then Arrow ``take`` per batch."""

    def __init__(self, books: pa.Table):
        self.books = books
        self.positions = {book_id: i for i, book_id in enumerate(books["id"].to_pylist())}

    def lookup(self, ids: list[str]) -> tuple[pa.Table, int]:
        """The payload rows of ``ids`` (null rows where no book has that id) and how many."""
        positions = [self.positions.get(book_id) for book_id in ids]
        return self.books.drop_columns(["id"]).take(pa.array(positions, pa.int64())), positions.count(None)


def payload_batches(
    embeddings: ds.Dataset, books: BookIndex | None, batch_size: int
) -> Iterator[tuple[list[dict[str, Any]], int, int, int]]:
    """``(rows with a vector, with their book's payload; rows read; rows skipped for a null
    vector; rows whose id has no book)`` per record batch of the embeddings."""
    columns = [c for c in ("id", "vector", "text_sha256", "cover_id") if c in embeddings.schema.names]
    for batch in embeddings.to_batches(columns=columns, batch_size=batch_size):
        table = pa.Table.from_batches([batch])
        read = len(table)
        table = table.filter(pc.is_valid(table["vector"]))  # e.g. covers whose image was broken
        missing = 0
        if books is not None:
            payload, missing = books.lookup(table["id"].to_pylist())
            for name in payload.column_names:
                table = table.append_column(name, payload[name])
        rows = table.to_pylist()
        for row in rows:  # cover vectors name their own cover
            if row.get("cover_id") is not None:
                row["cover_url"] = COVER_URL.format(cover_id=row["cover_id"])
        yield rows, read, read - len(rows), missing


def load_embeddings(
    store: MilvusVectorStore,
    embeddings_path: str | Path,
    *,
    alias: str,
    version: str,
    books_path: str | Path | None = None,
    model_dir: str | None = None,
    model_kind: str = "sentence-transformers",
    dataset: str = "books",
    batch_size: int = 1000,
    index_type: str = "auto",
    switch_alias: bool = True,
    extra_properties: Mapping[str, Any] | None = None,
    filesystem: pafs.FileSystem | None = None,
    books_filesystem: pafs.FileSystem | None = None,
    source: str | None = None,
) -> LoadResult:
    """Upsert the embeddings into the collection of (alias, model, version) and, when every
    batch went in, point ``alias`` at it. Idempotent: a re-run upserts the same ids.

    ``filesystem`` holds the embeddings (default: local; a warehouse's ``S3FileSystem`` for
    object storage), ``books_filesystem`` the books (default: ``filesystem``). ``source`` is the
    origin the collection records (default: the embeddings path; pass the URI the jobs wrote,
    since a ``bucket/key`` path does not name its store)."""
    started = time.monotonic()
    embeddings = open_parquet(embeddings_path, filesystem)
    if not {"id", "vector"} <= set(embeddings.schema.names):
        raise VectorStoreError(f"{embeddings_path} has no id and vector columns: {embeddings.schema.names}")
    meta = first_row_meta(embeddings)
    name = collection_name(alias, meta["model"] or model_kind, meta["model_fingerprint"], version)
    properties = {
        "alias": alias,
        "dataset": dataset,
        "version": version,
        "model": meta["model"],
        "model_fingerprint": meta["model_fingerprint"],
        "model_dir": model_dir,
        "model_kind": model_kind,
        "source": source or str(embeddings_path),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra_properties or {}),
    }
    created = store.ensure_collection(name, meta["dim"], embeddings.count_rows(), index_type, properties)
    payload = book_payload(books_path, books_filesystem or filesystem)
    books = BookIndex(payload) if payload is not None else None
    read = upserted = skipped = missing = 0
    for rows, n_read, n_skipped, n_missing in payload_batches(embeddings, books, batch_size):
        upserted += store.upsert(name, rows)
        read, skipped, missing = read + n_read, skipped + n_skipped, missing + n_missing
    store.flush(name)
    in_collection = store.count(name)
    store.mark_complete(name)  # only now may an alias point at it, or a rollback go to it
    previous = store.switch_alias(alias, name) if switch_alias else None
    return LoadResult(
        alias=alias,
        collection=name,
        created=created,
        rows_read=read,
        rows_upserted=upserted,
        rows_skipped_no_vector=skipped,
        rows_without_book=missing,
        rows_in_collection=in_collection,
        dim=meta["dim"],
        model=meta["model"],
        model_fingerprint=meta["model_fingerprint"],
        previous_collection=previous,
        alias_switched=switch_alias,
        seconds=round(time.monotonic() - started, 3),
    )


# --------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """``python -m spindle.vectors.loading EMBEDDINGS --alias A --books B --model-dir M``: load
    one embeddings Parquet (any job's output, e.g. ``embed_images`` run by hand) as a new
    version behind an alias, as the nightly DAG's ``load_vectors`` task does; prints one line."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m spindle.vectors.loading", description=main.__doc__.split(":")[0])
    parser.add_argument("embeddings", help="embeddings Parquet file or Spark output folder")
    parser.add_argument("--alias", required=True, help="e.g. books_text, books_covers")
    parser.add_argument("--books", help="payload (Parquet, or CSV with a header): id, title, author, publish_year")
    parser.add_argument("--model-dir", help="the vectors' model (recorded: search embeds queries with it)")
    parser.add_argument("--model-kind", default="sentence-transformers", choices=("sentence-transformers", "clip"))
    parser.add_argument("--version", help="version label (default: v<UTC now>_cli)")
    parser.add_argument("--dataset", default="books")
    parser.add_argument("--uri", help="milvus-lite .db path or server URI (default: as the search command)")
    args = parser.parse_args(argv)
    from spindle.vectors.search import open_store

    # milvus-lite's in-process gRPC server logs a traceback for a call pymilvus makes on upsert
    # and it does not implement (AllocTimestamp); harmless, and not this command's output.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    version = args.version or f"v{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S}_cli"
    try:
        with open_store(args.uri) as store:
            result = load_embeddings(
                store,
                args.embeddings,
                alias=args.alias,
                version=version,
                books_path=args.books,
                model_dir=str(Path(args.model_dir).resolve()) if args.model_dir else None,  # search runs anywhere
                model_kind=args.model_kind,
                dataset=args.dataset,
            )
    except (VectorStoreError, FileNotFoundError) as err:
        print(f"load: {err}", file=sys.stderr)
        return 2
    was = result.previous_collection or "none"
    print(
        f"{result.alias} -> {result.collection}: {result.rows_upserted} vectors "
        f"({result.rows_skipped_no_vector} rows without one; was {was})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
