"""prepare_books on the real Open Library sample, checked against a pure-Python reading of the
same lines (json + re, written here, sharing no code with the job)."""

import gzip
import json
import re
from collections import Counter

import pandas as pd
import pytest

from spark_apps.jobs import prepare_books
from tests.support.spark_apps import EDITIONS

REFERENCE_YEAR = 2026
MAX_AGE = 40
YEAR = re.compile(r"(?<![0-9])([0-9]{4})(?![0-9])")


def reference(
    lines,
    languages=("eng",),
    min_pages=100,
    subject="fiction",
    min_year=REFERENCE_YEAR - MAX_AGE,
):
    """Kept books ``{key: record}`` and per-filter failure counts of well-formed lines (a None
    criterion keeps every line)."""
    kept, failed = {}, Counter()
    for line in lines:
        columns = line.split("\t")
        if len(columns) != 5:
            continue
        record = json.loads(columns[4])
        codes = [lang["key"].rsplit("/", 1)[-1] for lang in record.get("languages", [])]
        pages = record.get("number_of_pages")
        subjects = record.get("subjects", [])
        match = YEAR.search(record.get("publish_date", ""))
        checks = {
            "language": any(code in languages for code in codes),
            "pages": isinstance(pages, (int, float)) and pages > min_pages,
            "subject": subject is None or any(subject in s.lower() for s in subjects),
            "age": min_year is None or (bool(match) and int(match.group(1)) >= min_year),
        }
        failed.update(name for name, ok in checks.items() if not ok)
        if all(checks.values()):
            kept[record["key"]] = record
    return kept, dict(failed)


def sample_lines():
    with open(EDITIONS, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def expected_text(record):
    """The documented text format: "title: subtitle", description, "Subjects: a, b"."""
    description = record.get("description")
    if isinstance(description, dict):
        description = description.get("value")
    head = ": ".join(p.strip() for p in (record.get("title"), record.get("subtitle")) if p and p.strip())
    parts = [head, (description or "").strip()]
    if record.get("subjects"):
        parts.append("Subjects: " + ", ".join(record["subjects"]))
    return "\n".join(p for p in parts if p)


def job_args(input_path, tmp_path, *extra):
    return [
        "--input",
        input_path,
        "--output",
        tmp_path / "books.parquet",
        "--quarantine",
        tmp_path / "quarantine.parquet",
        "--max-age-years",
        MAX_AGE,
        "--reference-year",
        REFERENCE_YEAR,
        *extra,
    ]


def test_counts_and_books_match_pure_python(run_job, tmp_path):
    lines = sample_lines()
    kept, failed = reference(lines)
    assert len(kept) == 12  # the sample's documented figure (PROVENANCE.md)

    metrics = run_job(prepare_books, job_args(EDITIONS, tmp_path))

    assert metrics["rows_read"] == len(lines) == 1000
    assert metrics["rows_kept"] == len(kept)
    assert metrics["rows_quarantined"] == 0
    assert metrics["rows_filtered_out"] == len(lines) - len(kept)
    assert metrics["failed_filter"] == failed
    assert set(metrics["seconds"]) >= {
        "read_parse",
        "write_books",
        "write_quarantine",
        "total",
    }
    books = pd.read_parquet(tmp_path / "books.parquet")
    assert sorted(books["id"]) == sorted(kept)
    assert len(pd.read_parquet(tmp_path / "quarantine.parquet")) == 0
    for book in books.to_dict("records"):
        record = kept[book["id"]]
        assert book["title"] == record["title"]
        assert book["number_of_pages"] == record["number_of_pages"]
        assert book["publish_year"] == int(YEAR.search(record["publish_date"]).group(1))
        assert list(book["subjects"]) == record["subjects"]
        assert list(book["languages"]) == [x["key"].split("/")[-1] for x in record["languages"]]
        assert list(book["cover_ids"]) == [c for c in record.get("covers", []) if c > 0]
        assert list(book["author_keys"]) == [a["key"] for a in record.get("authors", [])]
        assert list(book["work_keys"]) == [w["key"] for w in record.get("works", [])]
        assert book["text"] == expected_text(record)


def _broken_lines(good_line):
    """Deliberately malformed variants of a real line, with the reason each must get."""
    columns = good_line.split("\t")
    record = json.loads(columns[4])
    no_key = {k: v for k, v in record.items() if k != "key"}
    pages_text = dict(record, key=record["key"] + "-pages", number_of_pages="250")
    langs_text = dict(record, key=record["key"] + "-langs", languages=["eng"])

    def line(rec):
        return "\t".join(columns[:4] + [json.dumps(rec)])

    return [
        ("\t".join(columns[:4] + [columns[4][:-15]]), "bad_json", None),
        ("\t".join(columns[:2] + columns[3:]), "column_count", "4 columns"),
        ("", "column_count", "1 columns"),
        (line(no_key), "missing_key", None),
        (line(pages_text), "wrong_type", "number_of_pages"),
        (line(langs_text), "wrong_type", "languages"),
    ]


def test_quarantine_and_description_forms(run_job, tmp_path):
    lines = sample_lines()[:200]
    kept, _ = reference(lines)
    with_object = next(k for k, r in kept.items() if isinstance(r.get("description"), dict))
    source_line = next(x for x in lines if json.loads(x.split("\t")[4])["key"] == with_object)
    columns = source_line.split("\t")
    record = json.loads(columns[4])
    as_string = dict(record, key=with_object + "-s", description="  A plain string description.  ")
    string_line = "\t".join(columns[:4] + [json.dumps(as_string)])
    broken = _broken_lines(source_line)
    path = tmp_path / "editions.txt"
    path.write_text("\n".join(lines[:100] + [b[0] for b in broken] + lines[100:] + [string_line]) + "\n")

    metrics = run_job(prepare_books, job_args(path, tmp_path))

    assert metrics["rows_read"] == len(lines) + len(broken) + 1
    assert metrics["rows_quarantined"] == len(broken)
    assert metrics["quarantine_reasons"] == {
        "bad_json": 1,
        "column_count": 2,
        "missing_key": 1,
        "wrong_type": 2,
    }
    assert metrics["rows_kept"] == len(kept) + 1
    quarantine = pd.read_parquet(tmp_path / "quarantine.parquet")
    got = sorted(
        zip(
            quarantine["line"],
            quarantine["reason"],
            [None if pd.isna(d) else d for d in quarantine["detail"]],
        )
    )
    assert got == sorted(broken)
    assert all(quarantine["source_file"].str.endswith("editions.txt"))

    books = pd.read_parquet(tmp_path / "books.parquet").set_index("id")
    assert books.loc[with_object, "description"] == record["description"]["value"].strip()
    assert books.loc[with_object + "-s", "description"] == "A plain string description."
    assert "A plain string description." in books.loc[with_object + "-s", "text"]


def test_gzip_folder_glob_and_limit(run_job, tmp_path):
    lines = sample_lines()
    folder = tmp_path / "dump"
    folder.mkdir()
    with gzip.open(folder / "part-1.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines[:600]) + "\n")
    (folder / "part-2.txt").write_text("\n".join(lines[600:]) + "\n")

    everything = run_job(prepare_books, job_args(folder, tmp_path / "all"))
    assert everything["rows_read"] == 1000
    assert everything["rows_kept"] == len(reference(lines)[0])

    only_gz = run_job(prepare_books, job_args(str(folder / "*.gz"), tmp_path / "gz"))
    assert only_gz["rows_read"] == 600
    assert sorted(pd.read_parquet(tmp_path / "gz" / "books.parquet")["id"]) == sorted(reference(lines[:600])[0])

    limited = run_job(
        prepare_books,
        job_args(folder / "part-2.txt", tmp_path / "limit", "--limit", 150),
    )
    assert limited["rows_read"] == 150
    assert limited["rows_kept"] == len(reference(lines[600:750])[0])


def test_filters_are_options(run_job, tmp_path):
    lines = sample_lines()
    kept, _ = reference(lines, languages=("eng", "fre"), min_pages=300, subject=None, min_year=None)
    metrics = run_job(
        prepare_books,
        [
            "--input",
            EDITIONS,
            "--output",
            tmp_path / "b.parquet",
            "--languages",
            "eng,fre",
            "--min-pages",
            300,
            "--subject",
            "*",
            "--max-age-years",
            "none",
        ],
    )
    assert metrics["rows_kept"] == len(kept) > 12
    assert sorted(pd.read_parquet(tmp_path / "b.parquet")["id"]) == sorted(kept)
    assert (tmp_path / "b_quarantine.parquet").is_dir()  # the default quarantine path


@pytest.mark.parametrize(
    "argv",
    [["--min-pages", "many"], ["--limit", "x"]],
)
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        prepare_books.parse_args(["--input", "a", "--output", "b", *argv])
    assert "invalid" in capsys.readouterr().err


def reference_author(by_statement):
    """The documented clean-up of ``by_statement``, written again with re: its part before
    " ; ", no leading "by", no "with an introduction by ...", no brackets or end punctuation."""
    if not by_statement:
        return None
    name = re.split(r"\s*;\s*", by_statement, maxsplit=1)[0]
    name = re.sub(r"(?i)(^|\s*,?\s+)with\s+(a|an)\s+(new\s+)?(introduction|foreword|preface|afterword)\b.*$", "", name)
    name = re.sub(r"(?i)^\s*by\s+", "", name).replace("[", "").replace("]", "")
    name = re.sub(r"^[\s().,:;/-]+|[\s().,:;/-]+$", "", name)
    return name or None


def test_author_from_by_statement_then_from_an_authors_dump(run_job, tmp_path):
    """People's names, never author keys: ``by_statement`` where the edition has one, else the
    names of its author keys in an authors dump. The bundled authors sample (the tail of a dump)
    shares no key with the editions' head, so the dump here is made of two real author records
    of that sample given the keys of two sample editions' authors."""
    lines = sample_lines()
    records = [json.loads(line.split("\t")[4]) for line in lines]
    spoken = {r["key"]: reference_author(r.get("by_statement")) for r in records}
    assert reference_author("by Carl Horak ; [illustrations by Milton Caniff].") == "Carl Horak"
    assert reference_author("Donald Kuspit with an introduction by Jack Cowert.") == "Donald Kuspit"
    assert reference_author("with a foreword by Richard Lederer.") is None  # not the author
    unnamed = [r for r in records if not r.get("by_statement") and r.get("authors")][:2]
    authors_dump = tmp_path / "authors.txt"
    names = ["Jörg von Garrel", "H. Deutsch"]
    authors_dump.write_text(
        "".join(
            "\t".join(
                [
                    "/type/author",
                    r["authors"][0]["key"],
                    "1",
                    "2020-04-24T18:09:47.197943",
                    json.dumps({"name": name, "key": r["authors"][0]["key"]}),
                ]
            )
            + "\n"
            for r, name in zip(unnamed, names)
        )
        + "not a dump line\n",
        encoding="utf-8",
    )

    args = [
        "--input",
        EDITIONS,
        "--languages",
        "*",
        "--min-pages",
        "none",
        "--subject",
        "*",
        "--max-age-years",
        "none",
        "--authors",
        authors_dump,
    ]
    metrics = run_job(prepare_books, ["--output", tmp_path / "books.parquet", *args])
    books = pd.read_parquet(tmp_path / "books.parquet").set_index("id")
    assert len(books) == 1000
    dump = {r["authors"][0]["key"]: name for r, name in zip(unnamed, names)}
    expected = {}
    for r in records:  # every edition by those authors gets the name, in the edition's order
        from_dump = [dump[a["key"]] for a in r.get("authors", []) if a.get("key") in dump]
        expected[r["key"]] = spoken[r["key"]] or (", ".join(from_dump) if from_dump else None)
    got = {key: (None if pd.isna(value) else value) for key, value in books["author"].items()}
    assert got == expected
    assert metrics["rows_with_author"] == sum(1 for v in expected.values() if v) >= 81 + 2
    assert not any(str(v).startswith("/authors/") for v in got.values())
