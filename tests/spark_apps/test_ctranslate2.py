"""llm_transform --engine ctranslate2: the tiny random T5 converted with spark_apps.common.ct2, run
through the job, compared with transformers ``generate`` of each prompt alone (no batching, no
padding, no sorting): same greedy outputs in float32, rows kept with their ids, truncation counted."""

import hashlib
import json

import pandas as pd
import pytest
import torch

from spark_apps.common import ct2
from spark_apps.jobs import llm_transform
from tests.support.spark_apps import read_sts

TEMPLATE = "sentiment of the text: {text}"


@pytest.fixture(scope="module")
def tiny_t5_ct2(tiny_t5, tmp_path_factory):
    return ct2.convert(tiny_t5, str(tmp_path_factory.mktemp("models") / "tiny-t5-ct2"))


def reference(model_dir, prompts, max_new_tokens, min_new_tokens, max_input_tokens):
    """Per prompt: its greedy ``generate`` alone, truncated to ``max_input_tokens``; and whether it
    had more tokens than that."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    outputs, over = [], []
    with torch.no_grad():
        for prompt in prompts:
            over.append(len(tokenizer(prompt)["input_ids"]) > max_input_tokens)
            encoded = tokenizer(prompt, return_tensors="pt", truncation=True, max_length=max_input_tokens)
            ids = model.generate(
                **{k: encoded[k] for k in ("input_ids", "attention_mask")},
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                do_sample=False,
            )
            outputs.append(tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    return outputs, over


def mixed_lengths(n):
    """Short and long sentences interleaved, so sorting by length within a batch reorders rows."""
    texts = [s for _, a, b in read_sts()[:n] for s in (a, b)]
    return [t if i % 3 else t + " " + t for i, t in enumerate(texts)][:n]


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"id": 100 + i, "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def test_ctranslate2_job_matches_generate_of_each_prompt(run_job, tmp_path, tiny_t5, tiny_t5_ct2):
    texts = mixed_lengths(30)
    argv = ["--input", write_jsonl(tmp_path / "s.jsonl", texts), "--output", tmp_path / "out.parquet"]
    argv += ["--model", tiny_t5_ct2, "--engine", "ctranslate2", "--compute-type", "float32"]
    argv += ["--batch-size", 4, "--arrow-batch-size", 10, "--max-new-tokens", 6, "--min-new-tokens", 2]
    argv += ["--max-input-tokens", 16]

    metrics = run_job(llm_transform, argv)

    expected, over = reference(tiny_t5, [TEMPLATE.replace("{text}", t) for t in texts], 6, 2, 16)
    assert (metrics["engine"], metrics["compute_type"]) == ("ctranslate2", "float32")
    assert metrics["rows_transformed"] == len(texts)
    assert metrics["rows_truncated"] == sum(over) and 0 < sum(over) < len(texts)
    out = pd.read_parquet(tmp_path / "out.parquet").sort_values("id")
    assert list(out["id"]) == [100 + i for i in range(len(texts))]
    assert list(out["text"]) == texts
    assert list(out["label"]) == expected
    assert len(set(expected)) > 5  # outputs differ per row: a shuffled row would show
    with open(f"{tiny_t5_ct2}/model.bin", "rb") as handle:
        assert set(out["model_fingerprint"]) == {"sha256:" + hashlib.sha256(handle.read()).hexdigest()}


@pytest.mark.parametrize("kind", ["seq2seq", "ctranslate2:float32"])
def test_both_engines_restore_order_after_sorting_by_length(tiny_t5, tiny_t5_ct2, kind):
    """The UDF body on plain pandas batches: rows sorted by length inside each batch come back in
    their places, with min/max new tokens and truncation applied as ``generate`` applies them."""
    from spark_apps.common import inference

    prompts = [TEMPLATE.replace("{text}", t) for t in mixed_lengths(20)]
    batches = [pd.Series(prompts[:12]), pd.Series(prompts[12:])]
    model_dir = tiny_t5 if kind == "seq2seq" else tiny_t5_ct2
    frames = list(inference.generate_batches(iter(batches), model_dir, 3, 5, 14, 1, None, 3, kind))

    expected, over = reference(tiny_t5, prompts, 5, 3, 14)
    out = pd.concat(frames, ignore_index=True)
    assert list(out["text"]) == expected
    assert list(out["truncated"]) == over and any(over)
    assert out["error"].isna().all()


def test_int8_decodes_the_forced_length(tiny_t5, tiny_t5_ct2):
    """int8 changes the numbers, not the contract: min = max new tokens gives that many tokens."""
    tokenizer, translator = ct2.load(tiny_t5_ct2, "int8", threads=1)
    prompts = [TEMPLATE.replace("{text}", t) for t in mixed_lengths(8)]
    outputs = ct2.generate_texts(tokenizer, translator, prompts, 4, 5, 512, min_new_tokens=5)
    assert len(outputs) == len(prompts) and all(outputs)
    results = translator.translate_batch(
        [tokenizer.convert_ids_to_tokens(tokenizer(p)["input_ids"]) for p in prompts],
        beam_size=1,
        max_decoding_length=5,
        min_decoding_length=5,
    )
    assert all(len(r.hypotheses[0]) == 5 for r in results)


def test_an_unconverted_model_is_refused_clearly(tiny_t5):
    with pytest.raises(ct2.NotConvertedError, match="spark_apps.common.ct2 convert"):
        ct2.load(tiny_t5)


def test_min_new_tokens_above_max_is_refused(capsys):
    with pytest.raises(SystemExit):
        llm_transform.parse_args(["--input", "a", "--output", "b", "--model", "m", "--min-new-tokens", "9"])
    assert "--min-new-tokens" in capsys.readouterr().err
