"""bench/baselines.py computes what the job computes: the baselines the benchmark suite times
against embed_text / llm_transform give the same vectors / labels (no speed asserted here)."""

import baselines  # bench/ is on pythonpath (pytest.ini)
import numpy as np
import pytest
from embed_vs_bare import rows_of, sts_sentences

from tests.support.paths import BENCH


@pytest.fixture(scope="module")
def sentences_df(spark):
    spark.sparkContext.addPyFile(str(BENCH / "baselines.py"))  # the UDFs are pickled by reference
    texts = rows_of(sts_sentences(), 24)
    rows = spark.createDataFrame([(f"r{i}", t) for i, t in enumerate(texts)], "id string, text string")
    return texts, rows.coalesce(1)  # one Python worker loads each model: keeps the test short


@pytest.mark.parametrize("approach", ["row", "broadcast", "predict-batch"])
def test_embedding_baselines_match_bare_encode(spark, minilm_path, sentences_df, approach):
    from sentence_transformers import SentenceTransformer

    texts, rows = sentences_df
    args = baselines.parse_args(
        ["--approach", approach, "--input", "-", "--output", "-", "--model", minilm_path, "--batch-size", "8"]
    )
    got = {r["id"]: r["vector"] for r in baselines.apply(rows, baselines.make_udf(spark, args), args).collect()}
    bare = SentenceTransformer(minilm_path, device="cpu").encode(texts, normalize_embeddings=True)
    vectors = np.array([got[f"r{i}"] for i in range(len(texts))], dtype=np.float32)
    assert vectors.shape == bare.shape
    assert np.allclose(vectors, bare, atol=2e-4)  # padding differs by batch: float noise only


def test_llm_row_baseline_matches_batched_generate(spark, tiny_t5, sentences_df):
    from spark_apps.common import inference

    texts, rows = sentences_df
    args = baselines.parse_args(
        ["--approach", "llm-row", "--input", "-", "--output", "-", "--model", tiny_t5, "--max-new-tokens", "4"]
    )
    got = {r["id"]: r["label"] for r in baselines.apply(rows, baselines.make_udf(spark, args), args).collect()}
    tokenizer, model = baselines.cached_seq2seq(tiny_t5)
    prompts = [f"sentiment of the text: {t}" for t in texts]
    assert [got[f"r{i}"] for i in range(len(texts))] == inference.generate_texts(tokenizer, model, prompts, 8, 4)
