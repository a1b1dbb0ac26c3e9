"""embed_text through the production path vs bare sentence-transformers, and the STS Benchmark
dev Spearman of vectors embedded through the job."""

import hashlib
import json
import multiprocessing
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spark_apps.jobs import embed_text
from tests.support.spark_apps import REPO, STS_DEV, STS_TRAIN, read_sts

STS_SPEARMAN = 0.8672  # all-MiniLM-L6-v2, bare encode (data/samples PROVENANCE)


def spearman(a, b):
    """Spearman's rho: Pearson correlation of average ranks (no scipy needed)."""
    return pd.Series(a).rank().corr(pd.Series(b).rank())


def weights_sha256(model_dir):
    digest = hashlib.sha256()
    with open(f"{model_dir}/model.safetensors", "rb") as handle:
        digest.update(handle.read())
    return "sha256:" + digest.hexdigest()


@pytest.fixture(scope="module")
def bare_model(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path, device="cpu")


def test_vectors_match_bare_encode(run_job, tmp_path, minilm_path, bare_model):
    pairs = read_sts()[:60]
    texts = [s for _, a, b in pairs for s in (a, b)] + ["", "Ünïcödé — ✓ 表", "x " * 400]
    rows = [{"doc": f"d{i}", "body": t} for i, t in enumerate(texts)] + [{"doc": "null", "body": None}]
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    metrics = run_job(
        embed_text,
        [
            "--input",
            source,
            "--output",
            tmp_path / "emb.parquet",
            "--model",
            minilm_path,
            "--id-column",
            "doc",
            "--text-column",
            "body",
            "--batch-size",
            16,
            "--arrow-batch-size",
            50,
        ],
    )

    assert metrics["rows_in"] == len(rows)
    assert metrics["rows_skipped_null_text"] == 1
    assert metrics["rows_embedded"] == len(texts)
    assert metrics["model"] == "all-MiniLM-L6-v2"
    assert metrics["model_fingerprint"] == weights_sha256(minilm_path)
    assert metrics["executor_model_fingerprints"] == [weights_sha256(minilm_path)]  # the warm-up
    out = pd.read_parquet(tmp_path / "emb.parquet")
    assert list(out.columns) == ["id", "vector", "model", "model_fingerprint", "text_sha256"]
    assert sorted(out["id"]) == sorted(f"d{i}" for i in range(len(texts)))
    out = out.set_index("id").loc[[f"d{i}" for i in range(len(texts))]]

    got = np.stack(out["vector"].to_numpy()).astype(np.float64)
    expected = bare_model.encode(texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float64)
    assert got.shape == (len(texts), 384)
    cosine = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, cosine.min()
    assert np.abs(np.linalg.norm(got, axis=1) - 1).max() < 1e-5
    assert list(out["text_sha256"]) == [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
    assert set(out["model_fingerprint"]) == {weights_sha256(minilm_path)}
    assert set(out["model"]) == {"all-MiniLM-L6-v2"}


def test_sts_dev_spearman_through_the_job(run_job, tmp_path, minilm_path):
    pairs = read_sts(STS_DEV)
    assert len(pairs) == 1500
    sentences = sorted({s for _, a, b in pairs for s in (a, b)})
    ids = {s: f"s{i}" for i, s in enumerate(sentences)}
    source = tmp_path / "sts.csv"  # CSV on purpose: quotes and commas in real sentences
    pd.DataFrame({"id": [ids[s] for s in sentences], "text": sentences}).to_csv(source, index=False)

    metrics = run_job(
        embed_text,
        ["--input", source, "--output", tmp_path / "sts.parquet", "--model", minilm_path, "--model-name", "minilm"],
    )

    assert metrics["rows_embedded"] == len(sentences)
    out = pd.read_parquet(tmp_path / "sts.parquet")
    assert set(out["model"]) == {"minilm"}
    assert set(out["text_sha256"]) == {hashlib.sha256(s.encode("utf-8")).hexdigest() for s in sentences}
    vectors = dict(zip(out["id"], out["vector"]))
    cosine = [float(np.dot(vectors[ids[a]], vectors[ids[b]])) for _, a, b in pairs]
    rho = spearman(cosine, [score for score, _, _ in pairs])
    assert abs(rho - STS_SPEARMAN) <= 0.002, rho


def test_udf_body_yields_small_slices_in_input_order(minilm_path, bare_model):
    """The UDF body's output slices (kept small for memory) concatenate back to the input's rows:
    vectors equal bare ``encode``, a null text keeps its place with a null vector."""
    from spark_apps.common import inference

    texts = [s for _, a, b in read_sts()[:4] for s in (a, b)]
    batches = [pd.Series(texts[:3] + [None] + texts[3:5]), pd.Series(texts[5:])]
    pieces = list(inference.embed_batches(iter(batches), minilm_path, batch_size=4, output_rows=2))

    assert [len(p) for p in pieces] == [2, 2, 2, 2, 1]
    frame = pd.concat(pieces, ignore_index=True)
    assert frame["vector"].isna().tolist() == [False] * 3 + [True] + [False] * 5
    got = np.stack(frame["vector"].dropna().to_numpy())
    expected = bare_model.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.fixture(scope="module")
def onnx_exports(minilm_path, tmp_path_factory):
    """MiniLM exported once (fp32 + ONNX int8 + OpenVINO int8 calibrated on STS *train* texts, not
    the dev texts encoded below); copies of the folder holding fewer files pick the other runtimes."""
    import shutil

    pytest.importorskip("onnxruntime")
    from spark_apps.common import onnx_encoder

    root = tmp_path_factory.mktemp("onnx")
    calibration = root / "calibration.txt"
    calibration.write_text("".join(f"{s}\n" for _, a, b in read_sts(STS_TRAIN)[:150] for s in (a, b)))
    everything = str(root / "openvino")
    # the export command as a user runs it, in its own process: NNCF's quantization run in this
    # one leaves the shared SparkSession no longer active for the tests after it
    command = [sys.executable, "-m", "spark_apps.common.onnx_encoder", "export", minilm_path, everything]
    subprocess.run([*command, "--quantize", "--openvino-int8", str(calibration)], cwd=REPO, check=True)
    int8 = shutil.copytree(everything, str(root / "int8"))
    for name in ("openvino_model_int8.xml", "openvino_model_int8.bin"):
        (Path(int8) / name).unlink()
    fp32 = shutil.copytree(int8, str(root / "fp32"))
    (Path(fp32) / onnx_encoder.INT8_FILE).unlink()
    return {"fp32": fp32, "int8": int8, "openvino": everything}


@pytest.mark.parametrize(
    "variant, weights, min_cosine",
    [("fp32", "model.onnx", 0.9999), ("int8", "model_int8.onnx", 0.9), ("openvino", "openvino_model_int8.bin", 0.9)],
)
def test_an_onnx_export_folder_runs_through_the_job(
    run_job, tmp_path, onnx_exports, bare_model, variant, weights, min_cosine
):
    """``--model`` pointing at an export folder: the job encodes with the fastest runtime the folder
    holds (fingerprint = the weights it ran: OpenVINO int8, else ONNX int8, else ONNX fp32); vectors
    agree with PyTorch's."""
    folder = Path(onnx_exports[variant])
    texts = [s for _, a, b in read_sts()[:40] for s in (a, b)]
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))

    metrics = run_job(embed_text, ["--input", source, "--output", tmp_path / "emb.parquet", "--model", folder])

    expected_fingerprint = "sha256:" + hashlib.sha256((folder / weights).read_bytes()).hexdigest()
    assert metrics["model_fingerprint"] == expected_fingerprint
    assert metrics["executor_model_fingerprints"] == [expected_fingerprint]
    out = pd.read_parquet(tmp_path / "emb.parquet").set_index("id").loc[[f"d{i}" for i in range(len(texts))]]
    got = np.stack(out["vector"].to_numpy()).astype(np.float64)
    expected = bare_model.encode(texts, normalize_embeddings=True).astype(np.float64)
    cosine = (got * expected).sum(axis=1)
    assert cosine.min() >= min_cosine, cosine.min()
    if variant != "fp32":
        assert cosine.min() < 0.9999  # really the quantized file, not the fp32 one
    if variant == "openvino":  # really OpenVINO, not the ONNX int8 file beside it
        onnx_int8 = encode_in_own_process(str(folder), "model_int8.onnx", texts)
        assert np.abs(got - onnx_int8).max() > 1e-3


def _encode(folder, file_name, texts):
    from spark_apps.common import onnx_encoder

    kind = onnx_encoder.OpenVinoEncoder if file_name == onnx_encoder.OPENVINO_FILE else onnx_encoder.OnnxEncoder
    return kind(folder, file_name, threads=2).encode(texts, normalize_embeddings=True)


def encode_in_own_process(folder, file_name, texts):
    """An export's vectors from a spawned process: OpenVINO and NNCF loaded in this one leave the
    tests' shared SparkSession no longer active for the tests after them."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_encode, folder, file_name, texts).result()


def test_openvino_int8_keeps_sts_quality(onnx_exports, bare_model):
    """The OpenVINO int8 copy ranks STS Benchmark dev pairs as the PyTorch model does: Spearman within
    0.01 of PyTorch's on the same 500 pairs (docs/benchmarks.md: 0.8704 vs 0.8672 on all 1,500)."""
    from spark_apps.common import onnx_encoder

    pairs = read_sts()[:500]
    texts = [a for _, a, _ in pairs] + [b for _, _, b in pairs]
    folder = onnx_exports["openvino"]
    assert onnx_encoder.model_file(folder) == onnx_encoder.OPENVINO_FILE  # what embed_text runs

    def rho(vectors):
        return spearman((vectors[: len(pairs)] * vectors[len(pairs) :]).sum(axis=1), [p[0] for p in pairs])

    openvino = encode_in_own_process(folder, onnx_encoder.OPENVINO_FILE, texts)
    assert abs(rho(openvino) - rho(bare_model.encode(texts, normalize_embeddings=True))) <= 0.01
