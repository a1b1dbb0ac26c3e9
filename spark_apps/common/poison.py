"""Poison rows never kill a night: isolate the rows a model call raises on, dead-letter them.

Executor side (no Spark): :func:`isolate` runs a model call on a whole batch, as before; only
when it raises is the batch bisected until the failing rows stand alone. Every other row gets
its result; each failing row gets its error (``<type>: <message>``, truncated).

Driver side: :func:`write_split` writes the rows without an error to the output and the rows
with one to the dead-letter output (``<output stem>.dead_letter.parquet`` unless
``--dead-letter`` says otherwise): ``id``, ``error``, ``job``, ``model``, ``model_fingerprint``.
:func:`check_budget` fails the job when more than ``--max-error-rate`` of the rows in were
dead-lettered.
"""

ERROR_CHARS = 1000  # an error text is cut to this many characters (tracebacks of torch can be long)
DEAD_LETTER_SUFFIX = ".dead_letter.parquet"
DEFAULT_MAX_ERROR_RATE = 0.01


class ErrorBudgetExceeded(RuntimeError):
    """More rows were dead-lettered than ``--max-error-rate`` allows."""


# --------------------------------------------------------------------------- executor side
def error_text(err, limit=ERROR_CHARS):
    """``<type>: <message>`` of an exception, cut to ``limit`` characters."""
    message = " ".join(str(err).split())
    text = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _slice(items, start, stop):
    return items.iloc[start:stop] if hasattr(items, "iloc") else items[start:stop]


def isolate(call, items):
    """``call(items)`` -> one result per item, bisecting only when it raises.

    Returns ``(results, errors)``, two lists as long as ``items``: where ``errors[i]`` is None
    ``results[i]`` is item i's result; otherwise ``results[i]`` is None and ``errors[i]`` the
    error text of the call on item i alone. The happy path is exactly one call; a batch with k
    bad rows out of n costs about ``2 k log2(n)`` more calls on ever smaller slices.
    ``items``: a list, or a pandas Series/DataFrame (sliced by position).
    """
    total = len(items)
    results, errors = [None] * total, [None] * total

    def attempt(start, stop):
        try:
            out = call(_slice(items, start, stop))
            out = list(out)
            if len(out) != stop - start:
                raise ValueError(f"the model returned {len(out)} results for {stop - start} rows")
        except Exception as err:  # noqa: BLE001 - any failure of the model is the row's, once isolated
            if stop - start == 1:
                errors[start] = error_text(err)
                return
            middle = (start + stop) // 2
            attempt(start, middle)
            attempt(middle, stop)
            return
        results[start:stop] = out

    if total:
        attempt(0, total)
    return results, errors


# --------------------------------------------------------------------------- driver side
def default_location(target):
    """``<output without .parquet>.dead_letter.parquet``, next to the output."""
    stem = target.rstrip("/")
    if stem.endswith(".parquet"):
        stem = stem[: -len(".parquet")]
    return stem + DEAD_LETTER_SUFFIX


def location(args, warehouse, target):
    """The dead-letter path: ``--dead-letter`` (resolved like ``--output``), else the default."""
    given = getattr(args, "dead_letter", None)
    return warehouse.path(given) if given else default_location(target)


def write_split(spark, result, columns, target, dead_letter, job, persist=True, extra=(), error_column="error"):
    """Write ``result``'s rows with a null ``error_column`` (``columns`` of them) to ``target`` and
    the others to ``dead_letter`` (that column as ``error``); returns ``{"rows_dead_lettered", "dead_letter_reasons",
    "dead_letter"}`` plus the ``extra`` aggregates (``(name, Column)`` pairs, summed over the
    rows written).

    The UDF behind ``result`` must run once: its rows are persisted ``DISK_ONLY`` while both
    outputs are written. Chosen over a staging Parquet: the happy path then costs a write to the
    executors' local disks, not a second write and read through the warehouse (object storage on
    the clouds) plus a clean-up; a lost block is recomputed for its partition only (the models are
    deterministic). Counts come from an ``observe`` on the output's write, so the happy path has
    no extra pass; the dead-letter output is written only when a row failed (a stale one of an
    earlier attempt is removed), and its error types are counted from it (a small read).
    """
    from pyspark import StorageLevel
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from spark_apps.common import io, storage

    if persist:
        result = result.persist(StorageLevel.DISK_ONLY)
    try:
        failed = F.col(error_column).isNotNull()
        observed = Observation(job + "_outcome")
        aggregates = [F.sum(failed.cast("long")).alias("rows_dead_lettered")]
        aggregates += [F.sum(F.when(~failed, column).cast("long")).alias(name) for name, column in extra]
        io.write_parquet(result.observe(observed, *aggregates).where(~failed).select(*columns), target)
        counts = {k: v or 0 for k, v in observed.get.items()}
        outcome = dict(counts, dead_letter=None, dead_letter_reasons={})
        if counts["rows_dead_lettered"]:
            io.write_parquet(
                result.where(failed).select(
                    "id", F.col(error_column).alias("error"), F.lit(job).alias("job"), "model", "model_fingerprint"
                ),
                dead_letter,
            )
            outcome["dead_letter"] = dead_letter
            outcome["dead_letter_reasons"] = reasons(spark, dead_letter)
        elif storage.exists(spark, dead_letter):  # a re-run that now succeeds leaves no stale rows
            storage.delete(spark, dead_letter)
        return outcome
    finally:
        if persist:
            result.unpersist()


def reasons(spark, dead_letter):
    """``{error type: rows}`` of a dead-letter output (the text before the first ``:``)."""
    from pyspark.sql import functions as F

    kind = F.substring_index(F.col("error"), ":", 1).alias("reason")
    rows = spark.read.parquet(dead_letter).groupBy(kind).count().collect()  # one row per error type
    return {row["reason"]: row["count"] for row in rows}


def check_budget(dead, rows_in, max_rate, dead_letter):
    """Raise :class:`ErrorBudgetExceeded` when ``dead / rows_in`` is over ``max_rate``."""
    rate = dead / rows_in if rows_in else 0.0
    if rate > max_rate:
        raise ErrorBudgetExceeded(
            f"{dead} of {rows_in} rows in ({rate:.2%}) were dead-lettered, over --max-error-rate "
            f"{max_rate}: see {dead_letter}"
        )
