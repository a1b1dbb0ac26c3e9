"""Model inference over Arrow batches: the bodies of the jobs' iterator pandas UDFs.

Kept free of Spark so they can be called (and tested) on plain pandas Series. They live in an
importable module, not in the job scripts, because a job run as a script is ``__main__``:
cloudpickle would ship its functions by value and the model cache with them, so every task
would load the model again. From here the cache stays in the worker process.
"""

import time

from spark_apps.common import clip, models

LOADERS = {
    "sentence-transformers": models.load_sentence_transformer,
    "seq2seq": models.load_seq2seq,
    clip.KIND: clip.load_clip_dir,
}
#: ``ctranslate2:<compute type>``: a CTranslate2 conversion (spark_apps/common/ct2.py), not torch
CT2_KIND = "ctranslate2:"


def seq2seq_kind(engine, compute_type="int8"):
    """The model kind of llm_transform's ``--engine``."""
    return CT2_KIND + compute_type if engine == "ctranslate2" else "seq2seq"


def _ct2_loader(kind, threads):
    from spark_apps.common import ct2

    compute_type = kind[len(CT2_KIND) :]
    return lambda model_dir: ct2.load(model_dir, compute_type, threads or models.task_cpus())


def load(kind, model_spec, threads=None):
    """The cached model of ``kind`` and its fingerprint, torch (or CTranslate2) threads set for
    this task."""
    if kind.startswith(CT2_KIND):
        loader = _ct2_loader(kind, threads)
    else:
        models.set_torch_threads(threads)
        loader = LOADERS[kind]
    model, model_dir = models.cached_model(kind, model_spec, loader)
    return model, models.fingerprint(model_dir)


def warm_up_batches(batches, kind, model_spec, threads=None):
    """``Iterator[pd.Series]`` -> the model fingerprint per row, after loading the model."""
    import pandas as pd

    _, model_fingerprint = load(kind, model_spec, threads)
    for batch in batches:
        yield pd.Series([model_fingerprint] * len(batch), dtype=object)


# PySpark turns every output array into a Python list before building Arrow (~18 KB a row for
# 384 floats), so a 10,000-row batch would cost ~180 MiB at once; the JVM pairs output rows with
# input rows one by one, so a scalar-iterator UDF may yield in smaller slices. See docs/benchmarks.md.
OUTPUT_SLICE_ROWS = 1000


def output_slices(frame, rows=None):
    """``frame`` in consecutive slices of at most ``rows`` (default ``OUTPUT_SLICE_ROWS``) rows."""
    rows = rows or OUTPUT_SLICE_ROWS
    for start in range(0, len(frame), rows):
        yield frame.iloc[start : start + rows].reset_index(drop=True)


def over_limit(model, texts):
    """Per text: whether the model truncates it (more tokens than ``max_seq_length``, special
    tokens included); None when the model does not tell its tokenizer and limit."""
    limit = getattr(model, "max_seq_length", None)
    tokenizer = getattr(model, "tokenizer", None)
    if not limit or tokenizer is None:
        return None
    return tokens_over(tokenizer, limit, texts)


def tokens_over(tokenizer, limit, texts):
    """Per text: whether it has more than ``limit`` tokens, special tokens included. Only texts
    with more UTF-8 bytes than the limit can have more tokens (a token covers at least one byte,
    or one character), so short texts are never tokenized a second time."""
    margin = tokenizer.num_special_tokens_to_add() + 1  # + a leading word-start token
    candidates = [i for i, text in enumerate(texts) if len(text.encode("utf-8")) + margin > limit]
    flags = [False] * len(texts)
    if candidates:
        ids = tokenizer([texts[i] for i in candidates], truncation=False, verbose=False)["input_ids"]
        for i, tokens in zip(candidates, ids):
            flags[i] = len(tokens) > limit
    return flags


def embed_batches(batches, model_spec, batch_size, threads=None, on_batch=None, output_rows=None):
    """``Iterator[pd.Series of str]`` -> ``Iterator[pd.DataFrame(vector, model_fingerprint, error,
    truncated)]``.

    The whole Arrow batch goes to one ``encode`` call: sentence-transformers sorts it by
    length before cutting ``batch_size`` chunks, so larger Arrow batches pad less. A null text
    (a row carried over from the previous version) gets a null vector and fingerprint; the model
    is loaded at the first row that needs it, so a batch of carried rows costs nothing. When
    ``encode`` raises, the batch is bisected (:func:`spark_apps.common.poison.isolate`): the
    rows it raises on alone get a null vector and their ``error``, the others their vector.
    ``truncated``: the text is longer than the model's limit (embedded from its start).
    Results come out in slices of at most ``output_rows`` rows (see ``OUTPUT_SLICE_ROWS``).
    """
    import numpy as np
    import pandas as pd

    from spark_apps.common import poison

    model = model_fingerprint = None

    def encode(chunk):
        return model.encode(
            chunk,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32, copy=False)

    for texts in batches:
        present = texts.notna().to_numpy()
        if not present.any():
            yield pd.DataFrame(
                {"vector": [None] * len(texts), "model_fingerprint": None, "error": None, "truncated": None}
            )
            continue
        if model is None:
            model, model_fingerprint = load("sentence-transformers", model_spec, threads)
        start = time.perf_counter()
        chunk = texts[present].tolist()
        vectors, errors = poison.isolate(encode, chunk)
        if on_batch is not None:
            on_batch(time.perf_counter() - start, int(present.sum()))
        try:  # measured: 0.16 s for 400 texts over the limit vs 37 s to encode them (MiniLM, 1 thread)
            truncated = over_limit(model, chunk)
        except Exception:  # noqa: BLE001 - a text the tokenizer rejects is encode's to fail, not this count's
            truncated = None
        if present.all():
            frame = pd.DataFrame(
                {"vector": vectors, "model_fingerprint": model_fingerprint, "error": errors, "truncated": truncated}
            )
        else:
            columns = {name: np.full(len(texts), None, dtype=object) for name in ("vector", "error", "truncated")}
            for i, row in enumerate(np.flatnonzero(present)):
                columns["vector"][row] = vectors[i]
                columns["error"][row] = errors[i]
                columns["truncated"][row] = None if truncated is None else truncated[i]
            columns["model_fingerprint"] = np.where(present, model_fingerprint, None)
            frame = pd.DataFrame(
                {name: columns[name] for name in ("vector", "model_fingerprint", "error", "truncated")}
            )
        yield from output_slices(frame, output_rows)


def generate_texts(tokenizer, model, prompts, batch_size, max_new_tokens, max_input_tokens=512, min_new_tokens=0):
    """Greedy ``generate`` + decode of ``prompts``, ``batch_size`` at a time, in input order.

    Prompts are grouped by token length so a batch pads little; greedy decoding (no sampling,
    one beam) makes the output a function of the input only. ``min_new_tokens`` > 0 forbids the
    end token before that many tokens (benchmarks: every contender does the same work).
    """
    import torch

    lengths = tokenizer(list(prompts), truncation=True, max_length=max_input_tokens, verbose=False)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(lengths[i]))
    extra = {"min_new_tokens": min_new_tokens} if min_new_tokens else {}
    outputs = [None] * len(prompts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            encoded = tokenizer(
                [prompts[i] for i in chunk],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_input_tokens,
            )
            generated = model.generate(
                input_ids=encoded["input_ids"],  # not token_type_ids: seq2seq models reject them
                attention_mask=encoded["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                **extra,
            )
            for i, text in zip(chunk, tokenizer.batch_decode(generated, skip_special_tokens=True)):
                outputs[i] = text.strip()
    return outputs


def generate_batches(
    batches,
    model_spec,
    batch_size,
    max_new_tokens,
    max_input_tokens=512,
    threads=None,
    on_batch=None,
    min_new_tokens=0,
    kind="seq2seq",
):
    """``Iterator[pd.Series of prompts]`` -> ``Iterator[pd.DataFrame(text, model_fingerprint,
    error, truncated)]``. When generation raises, the batch is bisected
    (:func:`spark_apps.common.poison.isolate`): the prompts it raises on alone get a null text and
    their ``error``. ``truncated``: the prompt had more than ``max_input_tokens`` tokens (cut).
    ``kind``: ``seq2seq`` (transformers ``generate``) or :func:`seq2seq_kind` of CTranslate2."""
    import pandas as pd

    from spark_apps.common import poison

    (tokenizer, model), model_fingerprint = load(kind, model_spec, threads)
    if kind.startswith(CT2_KIND):
        from spark_apps.common.ct2 import generate_texts as engine_generate
    else:
        engine_generate = generate_texts

    def generate(chunk):
        return engine_generate(tokenizer, model, chunk, batch_size, max_new_tokens, max_input_tokens, min_new_tokens)

    for prompts in batches:
        start = time.perf_counter()
        chunk = prompts.tolist()
        texts, errors = poison.isolate(generate, chunk)
        if on_batch is not None:
            on_batch(time.perf_counter() - start, len(prompts))
        try:  # one tokenizer pass over the long prompts only: nothing next to generate
            truncated = tokens_over(tokenizer, max_input_tokens, chunk)
        except Exception:  # noqa: BLE001 - a prompt the tokenizer rejects is generate's to fail
            truncated = None
        yield pd.DataFrame(
            {"text": texts, "model_fingerprint": model_fingerprint, "error": errors, "truncated": truncated}
        )
