"""Vector versions behind an alias: list them, switch the alias, roll back.

    python -m spindle.vectors.versions list books_text
    python -m spindle.vectors.versions rollback books_text        # to the version before the current
    python -m spindle.vectors.versions switch books_text <collection>

Every load creates (or re-fills, for a re-run of the same run) its own collection and only then
moves the alias, so older versions stay searchable and a rollback is one alias switch.
"""

from __future__ import annotations

import argparse
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with open_store(args.uri) as store:
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
