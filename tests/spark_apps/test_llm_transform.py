"""llm_transform with a tiny random T5 (real WordPiece tokenizer) through the production path,
compared with a direct ``generate`` + decode of the same prompts, one prompt at a time."""

import hashlib
import json
import tarfile

import pandas as pd
import pytest

from spark_apps.jobs import llm_transform
from tests.support.references import direct_generate
from tests.support.spark_apps import read_sts


def sentences(n):
    return [s for _, a, b in read_sts()[: n // 2] for s in (a, b)]


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def test_labels_match_direct_generate(run_job, tmp_path, tiny_t5):
    texts = sentences(40)
    source = write_jsonl(tmp_path / "sentences.jsonl", texts)

    metrics = run_job(
        llm_transform,
        [
            "--input",
            source,
            "--output",
            tmp_path / "out.parquet",
            "--model",
            tiny_t5,
            "--batch-size",
            8,
            "--arrow-batch-size",
            16,
            "--max-new-tokens",
            6,
        ],
    )

    assert metrics["rows_transformed"] == len(texts)
    assert metrics["model"] == "tiny-t5"
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == ["id", "text", "label", "model", "model_fingerprint"]
    out = out.sort_values("id")
    assert list(out["text"]) == texts
    expected = direct_generate(tiny_t5, [f"sentiment of the text: {t}" for t in texts], 6)
    assert list(out["label"]) == expected
    assert len(set(expected)) > 5  # the comparison means something: outputs differ per row
    with open(f"{tiny_t5}/model.safetensors", "rb") as handle:
        assert set(out["model_fingerprint"]) == {"sha256:" + hashlib.sha256(handle.read()).hexdigest()}


def test_archive_model_custom_template_and_output_column(run_job, tmp_path, tiny_t5):
    """A .tar.gz model is shipped with the job (addArchive) and resolved on the executors."""
    archive = tmp_path / "tiny-t5.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_t5, arcname="tiny-t5")
    texts = sentences(6)
    source = write_jsonl(tmp_path / "s.jsonl", texts)
    template = "{x} classify: {text} | again: {text}"

    metrics = run_job(
        llm_transform,
        [
            "--input",
            source,
            "--output",
            tmp_path / "out.parquet",
            "--model",
            archive,
            "--prompt-template",
            template,
            "--output-column",
            "answer",
            "--max-new-tokens",
            4,
        ],
    )

    assert metrics["rows_transformed"] == len(texts)
    with open(f"{tiny_t5}/model.safetensors", "rb") as handle:
        weights = "sha256:" + hashlib.sha256(handle.read()).hexdigest()
    assert metrics["executor_model_fingerprints"] == [weights]  # found on the executors
    out = pd.read_parquet(tmp_path / "out.parquet").sort_values("id")
    prompts = [template.replace("{text}", t) for t in texts]
    assert list(out["answer"]) == direct_generate(tiny_t5, prompts, 4)
    assert set(out["model_fingerprint"]) == {weights}


@pytest.mark.parametrize(
    "argv",
    [["--prompt-template", "no placeholder"], ["--output-column", "text"], ["--output-column", "bad-name"]],
)
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        llm_transform.parse_args(["--input", "a", "--output", "b", "--model", "m", *argv])
    assert "--" in capsys.readouterr().err
