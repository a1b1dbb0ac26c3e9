"""CLIP: image and text embeddings from one model, loaded once per Python worker.

A CLIP model directory is what ``save_pretrained`` writes for ``CLIPModel`` plus its tokenizer
and image processor (``preprocessor_config.json``); like every Spindle model it is a local
directory or an archive shipped with the job, never a hub id (see :mod:`spark_apps.common.models`).

    from spark_apps.common.clip import load_clip, encode_texts, encode_images

    clip = load_clip("/models/clip-vit-base-patch32")
    queries = encode_texts(clip, ["a detective story in foggy London"])   # (1, d) float32
    covers = encode_images(clip, [PIL.Image.open("cover.jpg")])             # (1, d) float32

Both return L2-normalized float32 rows, so a dot product is the cosine similarity and text
queries and cover images live in the same space.
"""

import time

from spark_apps.common import models

KIND = "clip"
MAX_TEXT_TOKENS = 77  # CLIP's text context


class Clip:
    """A loaded CLIP model: ``model`` (``CLIPModel``), ``processor`` (its image processor),
    ``tokenizer``, ``model_dir`` and ``fingerprint`` (``sha256:`` of the weights)."""

    __slots__ = ("fingerprint", "model", "model_dir", "processor", "tokenizer")

    def __init__(self, model, processor, tokenizer, model_dir, fingerprint):
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer
        self.model_dir = model_dir
        self.fingerprint = fingerprint

    @property
    def dimension(self):
        return int(self.model.config.projection_dim)


def load_image_processor(model_dir):
    """The image processor saved with the model, on the PIL backend.

    transformers 5 picks torchvision when it is installed; its resize differs slightly from the
    reference CLIP preprocessing (PIL bicubic), and whether a node has torchvision must not
    change the vectors. transformers 4 calls the same implementation the slow one.
    """
    import transformers
    from transformers import AutoImageProcessor

    if int(transformers.__version__.split(".")[0]) >= 5:
        options = {"backend": "pil"}
    else:
        options = {"use_fast": False}
    return AutoImageProcessor.from_pretrained(model_dir, local_files_only=True, **options)


def load_clip_dir(model_dir):
    """``Clip`` from a local directory (no cache; see :func:`load_clip`)."""
    from transformers import AutoTokenizer, CLIPModel

    models._quiet_transformers()
    model = CLIPModel.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return Clip(model, load_image_processor(model_dir), tokenizer, model_dir, models.fingerprint(model_dir))


def _in_spark_task():
    try:
        from pyspark import TaskContext

        return TaskContext.get() is not None
    except ImportError:
        return False


def load_clip(model_spec, threads=None):
    """The ``Clip`` of ``model_spec`` (a model directory, or the name of a shipped archive),
    loaded once per process. Inside a Spark task torch gets ``threads`` (default:
    ``spark.task.cpus``) threads; elsewhere torch's thread count is left alone unless
    ``threads`` is given."""
    if threads or _in_spark_task():
        models.set_torch_threads(threads)
    clip, _ = models.cached_model(KIND, model_spec, load_clip_dir)
    return clip


def _features(output):
    """transformers 4 returns the projected features, 5 a model output holding them."""
    return output if hasattr(output, "detach") else output.pooler_output


def _normalized(features):
    import numpy as np
    import torch

    features = torch.nn.functional.normalize(features.float(), p=2, dim=-1)
    return features.cpu().numpy().astype(np.float32, copy=False)


def _empty(clip):
    import numpy as np

    return np.zeros((0, clip.dimension), dtype=np.float32)


def preprocess(clip, images):
    """``pixel_values`` (n, 3, H, W) float32 tensor of PIL images, by the saved processor."""
    return clip.processor(images=list(images), return_tensors="pt")["pixel_values"]


def encode_pixels(clip, pixel_values):
    """L2-normalized image embeddings of preprocessed ``pixel_values``."""
    import torch

    with torch.inference_mode():
        return _normalized(_features(clip.model.get_image_features(pixel_values=pixel_values)))


def encode_images(clip, images, batch_size=32):
    """``(n, d)`` float32, L2-normalized: ``CLIPModel.get_image_features`` of PIL images,
    preprocessed by the model's saved image processor, ``batch_size`` at a time."""
    import numpy as np

    images = list(images)
    if not images:
        return _empty(clip)
    chunks = [
        encode_pixels(clip, preprocess(clip, [image.convert("RGB") for image in images[start : start + batch_size]]))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def encode_texts(clip, texts, batch_size=64):
    """``(n, d)`` float32, L2-normalized: ``CLIPModel.get_text_features`` of ``texts`` (CLIP's
    tokenizer, truncated to 77 tokens), in the same space as :func:`encode_images`."""
    import numpy as np
    import torch

    texts = [str(t) for t in texts]
    if not texts:
        return _empty(clip)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            encoded = clip.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=MAX_TEXT_TOKENS,
                return_tensors="pt",
            )
            features = clip.model.get_text_features(
                input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
            )
            chunks.append(_normalized(_features(features)))
    return np.concatenate(chunks)


# --------------------------------------------------------------------------- Spark UDF body
def _values(series):
    """A column as a list with None for every kind of null (None, NaN, pd.NA)."""
    import pandas as pd

    return [None if pd.isna(v) else v for v in series.tolist()]


def embed_image_batches(batches, model_spec, fetcher, batch_size=32, threads=None, on_batch=None):
    """The body of embed_images' iterator pandas UDF (kept free of Spark, so it runs on plain
    pandas too).

    ``batches``: ``Iterator[pd.DataFrame(cover_id, image)]``; ``fetcher``: an
    :class:`spark_apps.common.images.ImageFetcher`. Yields ``pd.DataFrame(vector,
    image_sha256, error, model_fingerprint)`` per batch: every image of the Arrow batch is
    fetched (concurrently), then decoded, preprocessed and encoded ``batch_size`` at a time. A
    row whose image cannot be had gets a null vector and its ``error`` (``reason: detail``);
    it never fails the task. When the model raises on a chunk of images, the chunk is bisected
    (:func:`spark_apps.common.poison.isolate`): the images it raises on alone get a null vector
    and their ``model_error`` (the job dead-letters them), the others their vector.
    """
    import pandas as pd

    from spark_apps.common import images as imaging
    from spark_apps.common import poison

    clip = load_clip(model_spec, threads)
    for frame in batches:
        fetch_start = time.perf_counter()
        contents = _values(frame["content"]) if "content" in frame.columns else None
        fetched = fetcher.fetch_all(_values(frame["cover_id"]), _values(frame["image"]), contents)
        fetch_seconds = time.perf_counter() - fetch_start
        encode_start = time.perf_counter()
        vectors = [None] * len(frame)
        model_errors = [None] * len(frame)
        errors = [r.error for r in fetched]
        for start in range(0, len(fetched), batch_size):
            chunk, pixels = [], []
            for i in range(start, min(start + batch_size, len(fetched))):
                if errors[i] is not None:
                    continue
                try:
                    image = imaging.decode(fetched[i].data)
                    pixels.append(preprocess(clip, [image]))
                except imaging.ImageError as err:
                    errors[i] = err.message()
                    continue
                except Exception as err:  # noqa: BLE001 - a processor that rejects one image
                    errors[i] = imaging.ImageError("decode_error", repr(err)).message()
                    continue
                chunk.append(i)
            if chunk:
                import torch

                encoded, failures = poison.isolate(lambda part: encode_pixels(clip, torch.cat(list(part))), pixels)
                for i, vector, failure in zip(chunk, encoded, failures):
                    vectors[i], model_errors[i] = vector, failure
        if on_batch is not None:
            on_batch(fetch_seconds, time.perf_counter() - encode_start, len(frame))
        yield pd.DataFrame(
            {
                "vector": vectors,
                "image_sha256": [r.sha256 for r in fetched],
                "error": errors,
                "model_fingerprint": clip.fingerprint,
                "model_error": model_errors,
            }
        )
