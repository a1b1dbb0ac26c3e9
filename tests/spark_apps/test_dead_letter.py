"""Poison rows never kill a night: rows a real model raises on are isolated by bisection and
written to the dead-letter output, every other row to the output; an error budget fails the job.

The poison model is a real (tiny, random) sentence-transformers BERT whose ``max_seq_length``
(128) is larger than its position embeddings (32): texts of more than 32 tokens genuinely make
``encode`` raise, shorter ones embed. Nothing in the code under test is patched."""

import json

import numpy as np
import pandas as pd
import pytest

from spark_apps.common import poison
from spark_apps.jobs import embed_text
from tests.support.references import direct_generate


# --------------------------------------------------------------------------- bisect, plain pandas
def doubling(calls, bad=()):
    def call(chunk):
        calls.append(list(chunk))
        if any(v in bad for v in chunk):
            raise ValueError(f"bad value among {len(chunk)}")
        return [v * 2 for v in chunk]

    return call


def test_isolate_happy_path_is_one_call():
    calls = []
    results, errors = poison.isolate(doubling(calls), pd.Series(range(10)))
    assert results == [v * 2 for v in range(10)]
    assert errors == [None] * 10
    assert len(calls) == 1


@pytest.mark.parametrize("bad", [{0}, {9}, {3, 4}, {0, 5, 9}, set(range(10))])
def test_isolate_finds_exactly_the_failing_rows(bad):
    calls = []
    values = pd.Series(range(10), index=range(100, 110))  # sliced by position, not by label
    results, errors = poison.isolate(doubling(calls, bad), values)
    for i in range(10):
        if i in bad:
            assert results[i] is None
            assert errors[i] == "ValueError: bad value among 1"
        else:
            assert results[i] == i * 2 and errors[i] is None
    assert [c for c in calls if set(c) & bad and len(c) == 1] == [[v] for v in sorted(bad)]  # each alone once
    assert len(calls) <= 1 + 2 * len(bad) * 4  # about 2 k log2(n) calls, n = 10


def test_isolate_empty_and_wrong_length_results():
    assert poison.isolate(lambda chunk: [], []) == ([], [])
    results, errors = poison.isolate(lambda chunk: [1], ["a", "b"])  # 1 result for 2 rows: an error
    assert results == [1, 1]  # each row alone gets its one result
    assert errors == [None, None]
    results, errors = poison.isolate(lambda chunk: [], ["a"])
    assert results == [None] and errors[0].startswith("ValueError: the model returned 0 results for 1 rows")


def test_error_text_is_type_and_message_truncated():
    assert poison.error_text(KeyError("k")) == "KeyError: 'k'"
    assert poison.error_text(RuntimeError()) == "RuntimeError"
    text = poison.error_text(RuntimeError("line\n" * 1000), limit=50)
    assert len(text) == 50 and text.startswith("RuntimeError: line line") and text.endswith("...")


def test_default_dead_letter_location():
    assert poison.default_location("/w/runs/x/embeddings.parquet") == "/w/runs/x/embeddings.dead_letter.parquet"
    assert poison.default_location("s3a://b/out/") == "s3a://b/out.dead_letter.parquet"


def test_budget():
    poison.check_budget(1, 100, 0.01, "dl")
    poison.check_budget(0, 0, 0.0, "dl")
    with pytest.raises(poison.ErrorBudgetExceeded, match=r"2 of 100 rows in \(2\.00%\).*0\.01: see dl"):
        poison.check_budget(2, 100, 0.01, "dl")


# --------------------------------------------------------------------------- embed_text, a real failure
@pytest.fixture(scope="module")
def poison_st(tmp_path_factory):
    from devtools.tiny_models import build_tiny_sentence_transformer

    return build_tiny_sentence_transformer(
        str(tmp_path_factory.mktemp("models") / "poison-st"), max_position_embeddings=32, max_seq_length=128
    )


@pytest.fixture(scope="module")
def bare_poison(poison_st):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(poison_st, device="cpu")


def texts_and_poison():
    short = [f"book number {i} about a quiet harbour town" for i in range(30)]
    long = [f"story {i} " + "with a very long winding description " * 12 for i in range(3)]
    texts = short[:7] + [long[0]] + short[7:19] + [long[1]] + short[19:] + [long[2]]
    return texts, {f"d{i}" for i, t in enumerate(texts) if t in long}


def test_the_poison_model_really_fails_on_long_texts_only(bare_poison):
    texts, _ = texts_and_poison()
    short = [t for t in texts if "winding" not in t]
    assert bare_poison.encode(short).shape == (len(short), 32)
    with pytest.raises(RuntimeError, match="must match the size"):  # 7 + 12 * 6 tokens > 32 positions
        bare_poison.encode([texts[7]])


def write_input(tmp_path, texts):
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return source


def test_poison_rows_go_to_the_dead_letter_and_the_rest_is_embedded(run_job, tmp_path, poison_st, bare_poison):
    texts, bad_ids = texts_and_poison()
    source = write_input(tmp_path, texts)
    output = tmp_path / "run" / "embeddings.parquet"
    latest = tmp_path / "latest.json"
    metrics = run_job(
        embed_text,
        [
            "--input",
            source,
            "--output",
            output,
            "--model",
            poison_st,
            "--batch-size",
            4,
            "--arrow-batch-size",
            16,
            "--max-error-rate",
            0.25,
            "--latest",
            latest,
        ],
    )

    dead_path = str(tmp_path / "run" / "embeddings.dead_letter.parquet")
    assert metrics["rows_in"] == len(texts)
    assert metrics["rows_dead_lettered"] == len(bad_ids) == 3
    assert metrics["rows_embedded"] == len(texts) - 3
    assert metrics["rows_truncated"] == 0
    assert set(metrics["dead_letter_reasons"]) == {"RuntimeError"}
    assert metrics["dead_letter_reasons"]["RuntimeError"] == 3
    assert metrics["outputs"]["dead_letter"] == dead_path

    dead = pd.read_parquet(dead_path)
    assert list(dead.columns) == ["id", "error", "job", "model", "model_fingerprint"]
    assert set(dead["id"]) == bad_ids
    assert set(dead["job"]) == {"embed_text"}
    assert set(dead["model_fingerprint"]) == {metrics["model_fingerprint"]}
    assert all(e.startswith("RuntimeError: ") and len(e) <= poison.ERROR_CHARS for e in dead["error"])

    out = pd.read_parquet(output)
    assert list(out.columns) == list(embed_text.OUTPUT_COLUMNS)
    good = [(f"d{i}", t) for i, t in enumerate(texts) if f"d{i}" not in bad_ids]
    assert sorted(out["id"]) == sorted(i for i, _ in good)
    got = np.stack(out.set_index("id").loc[[i for i, _ in good], "vector"].to_numpy())
    expected = bare_poison.encode([t for _, t in good], normalize_embeddings=True)
    assert np.abs(got - expected).max() < 1e-5

    doc = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert doc["rows"]["dead_lettered"] == 3 and doc["rows"]["written"] == len(texts) - 3
    assert doc["dead_letter_reasons"] == {"RuntimeError": 3}
    assert doc["outputs"]["dead_letter"] == dead_path
    assert json.loads(latest.read_text())["embeddings"] == str(output)  # the pointer still moves


def test_the_error_budget_fails_the_job_and_leaves_the_pointer(run_job, tmp_path, poison_st):
    texts, _ = texts_and_poison()
    source = write_input(tmp_path, texts)
    output = tmp_path / "run" / "embeddings.parquet"
    latest = tmp_path / "latest.json"
    with pytest.raises(poison.ErrorBudgetExceeded) as raised:
        embed_text.main(
            [
                str(a)
                for a in [
                    "--input",
                    source,
                    "--output",
                    output,
                    "--model",
                    poison_st,
                    "--arrow-batch-size",
                    16,
                    "--latest",
                    latest,
                ]
            ]
        )
    message = str(raised.value)
    assert "3 of 33 rows in" in message and "0.01" in message
    assert str(tmp_path / "run" / "embeddings.dead_letter.parquet") in message
    assert not latest.exists() and not (tmp_path / "run" / "manifest.json").exists()


def test_a_clean_rerun_removes_the_stale_dead_letter_and_counts_truncation(run_job, tmp_path, tmp_path_factory):
    from devtools.tiny_models import build_tiny_sentence_transformer

    healthy = build_tiny_sentence_transformer(str(tmp_path_factory.mktemp("models") / "st-32"))  # limit 32
    texts, bad_ids = texts_and_poison()
    output = tmp_path / "embeddings.parquet"
    stale = tmp_path / "embeddings.dead_letter.parquet"
    pd.DataFrame({"id": ["old"], "error": ["RuntimeError: old"]}).to_parquet(stale)
    metrics = run_job(
        embed_text,
        ["--input", write_input(tmp_path, texts), "--output", output, "--model", healthy, "--manifest", "none"],
    )
    assert metrics["rows_dead_lettered"] == 0 and metrics["dead_letter_reasons"] == {}
    assert metrics["outputs"]["dead_letter"] is None and not stale.exists()
    assert metrics["rows_truncated"] == len(bad_ids)  # the long texts: truncated to 32 tokens, embedded
    assert len(pd.read_parquet(output)) == len(texts)


# --------------------------------------------------------------------------- llm_transform, a real failure
@pytest.fixture(scope="module")
def poison_t5(tmp_path_factory):
    """A tiny T5 whose embedding has 30000 rows for the tokenizer's 30522 ids: an input with a
    WordPiece beyond (``"x～y"`` -> ``##～``, 30521) makes the lookup raise; other inputs work."""
    from devtools.tiny_models import build_tiny_t5

    return build_tiny_t5(str(tmp_path_factory.mktemp("models") / "poison-t5"), vocab_size=30000)


def test_llm_poison_rows_go_to_the_dead_letter(run_job, tmp_path, poison_t5):
    from spark_apps.jobs import llm_transform

    texts = [f"sentence {i} about a harbour" + " and a lighthouse" * (i % 4) for i in range(20)]
    texts[5], texts[13] = "x～y broken", "an other x～y"
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    output = tmp_path / "labels.parquet"
    dead_path = tmp_path / "elsewhere" / "dead.parquet"
    metrics = run_job(
        llm_transform,
        [
            "--input",
            source,
            "--output",
            output,
            "--model",
            poison_t5,
            "--batch-size",
            4,
            "--arrow-batch-size",
            8,
            "--max-new-tokens",
            4,
            "--max-input-tokens",
            16,
            "--dead-letter",
            dead_path,
            "--max-error-rate",
            0.1,
        ],
    )

    assert metrics["rows_in"] == 20 and metrics["rows_transformed"] == 18 and metrics["rows_dead_lettered"] == 2
    assert metrics["dead_letter_reasons"] == {"IndexError": 2}
    assert metrics["outputs"]["dead_letter"] == str(dead_path)
    dead = pd.read_parquet(dead_path).sort_values("id")
    assert list(dead["id"]) == [5, 13] and set(dead["job"]) == {"llm_transform"}
    assert set(dead["model_fingerprint"]) == {metrics["model_fingerprint"]}
    assert all(e.startswith("IndexError: ") for e in dead["error"])

    out = pd.read_parquet(output).sort_values("id")
    good = [i for i in range(20) if i not in (5, 13)]
    assert list(out["id"]) == good
    prompts = [f"sentiment of the text: {texts[i]}" for i in good]
    assert list(out["label"]) == direct_generate(poison_t5, prompts, 4, max_input_tokens=16)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(poison_t5)
    assert metrics["rows_truncated"] == sum(len(tokenizer(p)["input_ids"]) > 16 for p in prompts) > 0


def test_llm_error_budget(tmp_path, poison_t5):
    from spark_apps.jobs import llm_transform

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": "x～y" if i == 3 else "fine"}) + "\n" for i in range(10)))
    with pytest.raises(poison.ErrorBudgetExceeded, match=r"1 of 10 rows in \(10\.00%\)"):
        llm_transform.main(
            [
                "--input",
                str(source),
                "--output",
                str(tmp_path / "o.parquet"),
                "--model",
                poison_t5,
                "--max-new-tokens",
                "2",
                "--max-error-rate",
                "0.05",
            ]
        )
    assert pd.read_parquet(tmp_path / "o.dead_letter.parquet")["id"].tolist() == [3]


# --------------------------------------------------------------------------- embed_images, a real failure
@pytest.fixture(scope="module")
def no_crop_clip(tmp_path_factory):
    """A tiny CLIP whose saved processor does not center-crop: a square image becomes 224x224
    pixels and embeds, a portrait one 336x224, which the vision model rejects (a real error)."""
    from devtools.tiny_models import build_tiny_clip
    from tests.support.spark_apps import SAMPLES

    out = build_tiny_clip(
        str(tmp_path_factory.mktemp("models") / "clip-no-crop"),
        vocab_path=str(SAMPLES / "clip" / "bpe_simple_vocab_16e6.txt.gz"),
    )
    path = f"{out}/preprocessor_config.json"
    with open(path) as handle:
        config = json.load(handle)
    config["do_center_crop"] = False
    with open(path, "w") as handle:
        json.dump(config, handle)
    return out


def test_images_the_model_raises_on_are_dead_lettered(run_job, tmp_path, no_crop_clip):
    import torch
    from PIL import Image
    from transformers import CLIPModel

    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers >= 5
    except ImportError:
        from transformers import CLIPImageProcessor as Processor

    from spark_apps.jobs import embed_images

    folder = tmp_path / "covers"
    folder.mkdir()
    portrait = {3, 8}
    for cover in range(1, 11):
        size = (200, 300) if cover in portrait else (240, 240)
        Image.new("RGB", size, (cover * 20, 255 - cover * 20, 90)).save(folder / f"{cover}.png")
    (folder / "11.png").write_bytes(b"not an image")  # a broken file: stays in the output, as before
    source = tmp_path / "books.csv"
    source.write_text("id,cover_id\n" + "".join(f"b{c},{c}\n" for c in range(1, 12)))
    output = tmp_path / "covers.parquet"
    metrics = run_job(
        embed_images,
        [
            "--input",
            source,
            "--output",
            output,
            "--model",
            no_crop_clip,
            "--images-dir",
            folder,
            "--batch-size",
            4,
            "--max-error-rate",
            0.2,
        ],
    )

    assert metrics["rows_dead_lettered"] == 2 and metrics["dead_letter_reasons"] == {"ValueError": 2}
    assert metrics["images_embedded"] == 8 and metrics["images_failed"] == 1
    dead = pd.read_parquet(metrics["outputs"]["dead_letter"]).sort_values("id")
    assert metrics["outputs"]["dead_letter"] == str(tmp_path / "covers.dead_letter.parquet")
    assert list(dead["id"]) == ["b3", "b8"] and set(dead["job"]) == {"embed_images"}
    assert all("doesn't match model" in e for e in dead["error"])
    out = pd.read_parquet(output).set_index("id")
    assert sorted(out.index) == sorted(f"b{c}" for c in range(1, 12) if c not in portrait)
    assert out.loc["b11", "error"].startswith("decode_error") and out.loc["b11", "vector"] is None

    model = CLIPModel.from_pretrained(no_crop_clip).eval()  # independent: per image, unbatched
    processor = Processor.from_pretrained(no_crop_clip)
    for cover in sorted(set(range(1, 11)) - portrait):
        with torch.no_grad():
            pixels = processor(images=Image.open(folder / f"{cover}.png").convert("RGB"), return_tensors="pt")
            vector = model.get_image_features(pixel_values=pixels["pixel_values"])
            vector = (vector if torch.is_tensor(vector) else vector.pooler_output)[0]
        expected = (vector / vector.norm()).numpy()
        assert np.abs(out.loc[f"b{cover}", "vector"] - expected).max() < 1e-5
