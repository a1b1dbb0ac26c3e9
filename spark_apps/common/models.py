"""Model directories: where to find them on a node, their fingerprint, per-worker loading.

Models are never fetched from a hub: a model is a local directory saved with
``save_pretrained``, or an archive shipped with the job (``--archives m.tar.gz#alias`` or the
job's own ``addArchive``), unpacked into the executor's working dir or SparkFiles root.
"""

import hashlib
import os
import threading

# an ONNX export folder (spark_apps/common/onnx_encoder.py) has no PyTorch weights: its fingerprint
# is the file the loader runs (OpenVINO int8 weights, then ONNX int8, then ONNX); a CTranslate2
# conversion's is model.bin
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "openvino_model_int8.bin",
    "model_int8.onnx",
    "model.onnx",
    "model.bin",
)
MODEL_MARKERS = ("config.json", "modules.json")
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")

_LOCK = threading.Lock()
_MODELS = {}  # (kind, model dir) -> loaded model: one copy per Python worker process
_FINGERPRINTS = {}


class ModelNotFoundError(FileNotFoundError):
    pass


def is_model_dir(path):
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in MODEL_MARKERS)


def _unwrap(path):
    """Archives often hold one top-level folder around the model: look inside it."""
    if os.path.isdir(path) and not is_model_dir(path):
        subdirs = [os.path.join(path, d) for d in os.listdir(path) if not d.startswith(".")]
        subdirs = [d for d in subdirs if os.path.isdir(d)]
        if len(subdirs) == 1:
            return subdirs[0]
    return path


def _sparkfiles_root():
    try:
        from pyspark import SparkFiles

        return SparkFiles.getRootDirectory()
    except (ImportError, AssertionError, AttributeError):  # plain Python: no Spark, nothing shipped
        return None


def _candidates(spec):
    yield os.path.expanduser(spec)
    if os.path.isabs(spec):
        return
    # --archives m.tar.gz#alias unpacks into the executor's working directory (YARN, k8s) ...
    yield os.path.join(os.getcwd(), spec)
    # ... and into the SparkFiles root (addArchive, standalone, local mode).
    root = _sparkfiles_root()
    if root:
        yield os.path.join(root, spec)


def resolve_model_dir(spec):
    """The local directory of model ``spec`` on this node (driver or executor)."""
    for candidate in _candidates(spec):
        path = _unwrap(candidate)
        if is_model_dir(path):
            return os.path.abspath(path)
    raise ModelNotFoundError(
        f"model {spec!r} is neither a local model directory nor shipped with the job (looked in the "
        "working directory and the SparkFiles root); models are never downloaded"
    )


def is_archive(path):
    return os.path.isfile(path) and path.lower().endswith(ARCHIVE_SUFFIXES)


def ship_model(spark, spec):
    """Driver side: turn ``--model`` into what executors should resolve.

    A local archive is shipped with ``addArchive`` (unpacked on every node under its file
    name); a local directory is used in place (same machine or a shared filesystem); anything
    else is assumed to be shipped by the submitter (``--archives ...#spec``).
    """
    path = os.path.abspath(os.path.expanduser(spec))
    if is_archive(path):
        spark.sparkContext.addArchive(path)
        return os.path.basename(path)
    if is_model_dir(_unwrap(path)):
        return os.path.abspath(_unwrap(path))
    return spec


def model_name(model_dir):
    """A readable name: the model card's title (``# all-MiniLM-L6-v2``), else the dir name."""
    card = os.path.join(model_dir, "README.md")
    if os.path.isfile(card):
        with open(card, encoding="utf-8", errors="replace") as handle:
            in_front_matter = False
            for number, line in enumerate(handle):
                if number == 0 and line.strip() == "---":
                    in_front_matter = True
                elif in_front_matter:
                    in_front_matter = line.strip() != "---"
                elif line.startswith("# ") and line[2:].strip():
                    return line[2:].strip()
    return os.path.basename(os.path.normpath(model_dir))


def describe(spec, explicit_name=None):
    """Driver side: ``(name, fingerprint)`` for the metrics; the fingerprint is None when only
    the executors can see the model (shipped with spark-submit --archives)."""
    try:
        model_dir = resolve_model_dir(spec)
    except ModelNotFoundError:
        return explicit_name or os.path.basename(spec.rstrip("/")), None
    return explicit_name or model_name(model_dir), fingerprint(model_dir)


def _hash_files(paths, root):
    digest = hashlib.sha256()
    for path in paths:
        if len(paths) > 1:
            digest.update(os.path.relpath(path, root).encode("utf-8") + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def fingerprint(model_dir):
    """``sha256:<hex>`` of the weights file, or of every file in the directory when there is no
    single weights file (sharded or unusual layouts). Cached per process."""
    model_dir = os.path.abspath(model_dir)
    if model_dir not in _FINGERPRINTS:
        weights = [os.path.join(model_dir, w) for w in WEIGHT_FILES]
        weights = [w for w in weights if os.path.isfile(w)]
        if weights:
            paths = weights[:1]
        else:
            paths = sorted(
                os.path.join(root, name)
                for root, dirs, files in os.walk(model_dir)
                for name in files
                if "__pycache__" not in root
            )
        _FINGERPRINTS[model_dir] = "sha256:" + _hash_files(paths, model_dir)
    return _FINGERPRINTS[model_dir]


def task_cpus():
    """Cores of the current Spark task (``spark.task.cpus``); 1 outside a task.

    Spark also exports OMP_NUM_THREADS=task.cpus to Python workers, the fallback here.
    """
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is not None:
            return max(1, int(context.cpus()))
    except AttributeError:  # Spark < 3.3: no TaskContext.cpus()
        pass
    return max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1))


def set_torch_threads(threads=None):
    """One torch thread per task core: more threads than cores only fight each other."""
    import torch

    threads = int(threads or task_cpus())
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def cached_model(kind, spec, loader):
    """Load ``spec`` with ``loader(model_dir)`` once per Python worker; return (model, dir)."""
    model_dir = resolve_model_dir(spec)
    key = (kind, model_dir)
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = loader(model_dir)
    return _MODELS[key], model_dir


def _quiet_transformers():
    """No per-load progress bars in executor logs."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def load_sentence_transformer(model_dir):
    """A ``SentenceTransformer``, or an OpenVINO / ONNX Runtime encoder when ``model_dir`` is an
    export folder (same ``encode`` call; see spark_apps/common/onnx_encoder.py)."""
    from spark_apps.common import onnx_encoder

    exported = onnx_encoder.load_encoder(model_dir, threads=task_cpus())
    if exported is not None:
        return exported
    from sentence_transformers import SentenceTransformer

    _quiet_transformers()
    return SentenceTransformer(model_dir, device="cpu", local_files_only=True)


def load_seq2seq(model_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    return tokenizer, model
