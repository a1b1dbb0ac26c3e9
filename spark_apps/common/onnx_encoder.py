"""Optional faster CPU encoders for mean-pooled sentence-transformers models (all-MiniLM-L6-v2):
ONNX Runtime (fp32, int8 dynamic quantization) and OpenVINO (int8 post-training quantization).

Why not sentence-transformers' own ``backend="onnx"``: it exports and loads through
``optimum-onnx``, whose releases require transformers < 4.58, and this project pins
transformers 5. So the export is done here with ``torch.onnx.export`` (the transformer only:
``input_ids``, ``attention_mask``, ``token_type_ids`` -> ``last_hidden_state``), the pooling
(mean over the attention mask) and the L2 normalization in numpy, exactly as the model's
``1_Pooling`` / ``2_Normalize`` modules do. ``quantize=True`` adds a dynamically int8-quantized
copy (``onnxruntime.quantization.quantize_dynamic``: int8 weights, activations quantized at run
time). ``openvino_calibration=TEXTS`` adds an OpenVINO int8 copy (``openvino_model_int8.xml``
+ ``.bin``): NNCF's post-training quantization of the same export, calibrated on TEXTS (a few
hundred from the data to be embedded), with its transformer preset (SmoothQuant, fast bias
correction). It is the fastest of the three on CPU and keeps STS Benchmark quality
(docs/benchmarks.md, issue 12 section 3).

The exported folder is self-contained (``model.onnx``, the quantized copies, the tokenizer files,
``1_Pooling``) and can be shipped like any model folder or archive: ``embed_text --model FOLDER``
then encodes with the fastest file the folder holds (OpenVINO int8, then ONNX int8, then ONNX
fp32), fingerprinted by that file's weights.

    python -m spark_apps.common.onnx_encoder export MODEL_DIR OUT_DIR [--quantize] [--openvino-int8 TEXTS.txt]

Optional dependencies: ``onnx`` and ``nncf`` (export only, requirements-dev.txt), ``onnxruntime``
and ``openvino`` (to run; requirements-cluster.txt: openvino needs Python >= 3.10).
"""

import argparse
import json
import os
import shutil

ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
OPENVINO_FILE = "openvino_model_int8.xml"  # its weights: openvino_model_int8.bin
CALIBRATION_TEXTS = 300
_COPIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "README.md",
)


def export(model_dir, out_dir, quantize=False, openvino_calibration=None, opset=17):
    """Export the transformer of ``model_dir`` to ``out_dir/model.onnx``, plus the ONNX int8 copy
    (``quantize``) and the OpenVINO int8 one (calibrated on the texts ``openvino_calibration``);
    returns ``out_dir``."""
    import torch
    from transformers import AutoModel

    os.makedirs(out_dir, exist_ok=True)
    transformer = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()

    class LastHiddenState(torch.nn.Module):  # keyword arguments: forward()'s order varies by version
        def __init__(self):
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    model = LastHiddenState().eval()
    ids = torch.ones((2, 8), dtype=torch.long)
    dynamic = {0: "batch", 1: "sequence"}
    with torch.inference_mode():
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            os.path.join(out_dir, ONNX_FILE),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                "input_ids": dynamic,
                "attention_mask": dynamic,
                "token_type_ids": dynamic,
                "last_hidden_state": dynamic,
            },
            opset_version=opset,
            dynamo=False,
        )
    for name in _COPIED:
        if os.path.exists(os.path.join(model_dir, name)):
            shutil.copy(os.path.join(model_dir, name), out_dir)
    pooling = os.path.join(model_dir, "1_Pooling")
    if os.path.isdir(pooling):
        shutil.copytree(pooling, os.path.join(out_dir, "1_Pooling"), dirs_exist_ok=True)
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            os.path.join(out_dir, ONNX_FILE), os.path.join(out_dir, INT8_FILE), weight_type=QuantType.QInt8
        )
    if openvino_calibration is not None:
        quantize_openvino(out_dir, openvino_calibration)
    return out_dir


def quantize_openvino(folder, texts, batch_size=16):
    """NNCF int8 post-training quantization of ``folder/model.onnx`` into ``folder/OPENVINO_FILE``,
    calibrated on the first ``CALIBRATION_TEXTS`` of ``texts``."""
    import nncf
    import openvino as ov
    from transformers import AutoTokenizer

    texts = [t for t in texts if t and t.strip()][:CALIBRATION_TEXTS]
    if not texts:
        raise ValueError("OpenVINO int8 calibration needs texts like those to be embedded; none were given")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    max_length = _max_seq_length(folder)
    model = ov.Core().read_model(os.path.join(folder, ONNX_FILE))
    names = {port.get_any_name() for port in model.inputs}
    batches = [
        _model_feed(tokenizer, texts[start : start + batch_size], max_length, names)
        for start in range(0, len(texts), batch_size)
    ]
    quantized = nncf.quantize(
        model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches)
    )
    # compress_to_fp16=False: the layers left in float keep float32 weights, as measured
    ov.save_model(quantized, os.path.join(folder, OPENVINO_FILE), compress_to_fp16=False)


def model_file(folder):
    """The file an export folder is run with (the fastest it holds), or None."""
    for name in (OPENVINO_FILE, INT8_FILE, ONNX_FILE):
        if os.path.isfile(os.path.join(folder, name)):
            return name
    return None


def load_encoder(folder, threads=None):
    """The encoder of an export folder (OpenVINO or ONNX Runtime by ``model_file``), or None."""
    name = model_file(folder)
    if name is None:
        return None
    kind = OpenVinoEncoder if name == OPENVINO_FILE else OnnxEncoder
    return kind(folder, name, threads=threads)


def _model_feed(tokenizer, texts, max_length, input_names):
    """The graph's inputs for ``texts``: int64 ids padded to the longest and truncated to
    ``max_length``; BERT-style graphs take ``token_type_ids``, zeros where the tokenizer gives none."""
    import numpy as np

    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    feed = {k: v.astype(np.int64) for k, v in encoded.items() if k in input_names}
    if "token_type_ids" in input_names and "token_type_ids" not in feed:
        feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
    return feed


class _PooledEncoder:
    """``encode(texts, batch_size, normalize_embeddings=True)`` like ``SentenceTransformer.encode``
    (float32 numpy rows in input order; texts sorted by length inside the call, as it does) over a
    runtime's ``_last_hidden_state(feed)``."""

    def _load_tokenizer(self, folder, max_seq_length):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.max_seq_length = max_seq_length or _max_seq_length(folder)

    def encode(self, texts, batch_size=64, normalize_embeddings=True, **_ignored):
        import numpy as np

        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), 0), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            feed = _model_feed(self.tokenizer, [texts[i] for i in chunk], self.max_seq_length, self.inputs)
            hidden = self._last_hidden_state(feed)
            mask = feed["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            if normalize_embeddings:
                pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            if out.shape[1] == 0:
                out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
            out[chunk] = pooled
        return out


class OnnxEncoder(_PooledEncoder):
    """An ONNX export run by ONNX Runtime on ``threads`` intra-op threads."""

    def __init__(self, folder, file_name=ONNX_FILE, threads=None, max_seq_length=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(folder, file_name), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}
        self._load_tokenizer(folder, max_seq_length)

    def _last_hidden_state(self, feed):
        return self.session.run(None, feed)[0]


class OpenVinoEncoder(_PooledEncoder):
    """An OpenVINO model (the int8 IR; OpenVINO reads the ONNX file too) compiled for the CPU on
    ``threads`` threads, in ``precision`` wherever it is not int8: float32 by default, not the bf16
    OpenVINO picks on CPUs that have it (the quality measured is float32's)."""

    def __init__(self, folder, file_name=OPENVINO_FILE, threads=None, max_seq_length=None, precision="f32"):
        try:
            import openvino as ov
        except ImportError as error:
            raise ImportError(
                f"{folder} holds an OpenVINO model ({file_name}) but openvino is not installed here: it is in "
                "requirements-cluster.txt for Python >= 3.10; on an older Python ship a folder without it "
                "(the ONNX int8 copy runs with onnxruntime)"
            ) from error
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        compiled = ov.Core().compile_model(os.path.join(folder, file_name), "CPU", config)
        self.inputs = {port.get_any_name() for port in compiled.inputs}
        self.request = compiled.create_infer_request()
        self._load_tokenizer(folder, max_seq_length)

    def _last_hidden_state(self, feed):
        return self.request.infer(feed)[0]


def _max_seq_length(folder):
    path = os.path.join(folder, "sentence_bert_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            return int(json.load(handle).get("max_seq_length") or 512)
    return 512


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("export", help="export MODEL_DIR to OUT_DIR")
    cmd.add_argument("model_dir")
    cmd.add_argument("out_dir")
    cmd.add_argument("--quantize", action="store_true", help="also write an int8 model_int8.onnx")
    cmd.add_argument(
        "--openvino-int8",
        metavar="TEXTS",
        help=f"also write an OpenVINO int8 {OPENVINO_FILE}, calibrated on this file's lines (the first "
        f"{CALIBRATION_TEXTS}: texts like those to be embedded)",
    )
    args = parser.parse_args(argv)
    calibration = None
    if args.openvino_int8:
        with open(args.openvino_int8, encoding="utf-8") as handle:
            calibration = handle.read().splitlines()
    print(export(args.model_dir, args.out_dir, quantize=args.quantize, openvino_calibration=calibration))


if __name__ == "__main__":
    main()
