"""Vector versions behind an alias: list them, switch the alias, roll back.

    python -m spindle.vectors.versions list books_text
    python -m spindle.vectors.versions rollback books_text        # to the version before the current
    python -m spindle.vectors.versions switch books_text <collection>
    python -m spindle.vectors.versions drop-partial --older-than-hours 6 [--dry-run]

Every load creates (or re-fills, for a re-run of the same run) its own collection and only then
moves the alias, so older versions stay searchable and a rollback is one alias switch. A load killed half way
leaves a *partial* version (listed as such): never a rollback or switch target, and dropped by
``drop-partial`` (the reaper DAG runs it) once older than the given age.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence

from spindle.vectors.search import open_store
from spindle.vectors.store import MilvusVectorStore, VectorStoreError


def format_versions(store: MilvusVectorStore, alias: str) -> str:
    current = store.resolve_alias(alias)
    lines = [f"{'':2}{'collection':<72}  {'created (UTC)':<25}  {'rows':>7}  model"]
    for info in store.versions(alias):
        mark = "* " if info.name == current else "  "
        lines.append(
            f"{mark}{info.name:<72}  {info.prop('created_at') or '-':<25}  {store.count(info.name):>7}  "
            f"{info.prop('model')} {(info.prop('model_fingerprint') or '')[:15]}"
            + ("" if info.complete else "  PARTIAL (load never completed)")
        )
    return "\n".join(lines + [f"(* = current: {alias} -> {current})"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m spindle.vectors.versions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", help="milvus-lite .db path or server URI (default: as the search command)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="versions of an alias, oldest first").add_argument("alias")
    commands.add_parser("rollback", help="point the alias at the version before the current").add_argument("alias")
    switch = commands.add_parser("switch", help="point the alias at a given collection")
    switch.add_argument("alias")
    switch.add_argument("collection")
    drop = commands.add_parser("drop-partial", help="drop versions whose load never completed")
    drop.add_argument("--older-than-hours", type=float, default=6.0, help="keep younger ones (default 6)")
    drop.add_argument("--dry-run", action="store_true", help="only list them")
    return parser.parse_args(argv)


def drop_partial(store: MilvusVectorStore, older_than_hours: float, dry_run: bool) -> str:
    found = store.drop_partial(dt.timedelta(hours=older_than_hours), dry_run=dry_run)
    verb = "would drop" if dry_run else "dropped"
    lines = [f"{verb} {info.name} (alias {info.prop('alias')}, created {info.prop('created_at')})" for info in found]
    return "\n".join(lines + [f"{len(found)} partial version(s) older than {older_than_hours} h {verb}"])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with open_store(args.uri) as store:
            if args.command == "drop-partial":
                print(drop_partial(store, args.older_than_hours, args.dry_run))
                return 0
            if args.command == "rollback":
                print(f"{args.alias} -> {store.rollback(args.alias)}")
            elif args.command == "switch":
                previous = store.switch_alias(args.alias, args.collection)
                print(f"{args.alias} -> {args.collection} (was {previous})")
            print(format_versions(store, args.alias))
    except VectorStoreError as err:
        print(f"versions: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
