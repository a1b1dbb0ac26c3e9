"""An optional ONNX Runtime encoder for mean-pooled sentence-transformers models (all-MiniLM-L6-v2).

Why not sentence-transformers' own ``backend="onnx"``: it exports and loads through
``optimum-onnx``, whose releases require transformers < 4.58, and this project pins
transformers 5. So the export is done here with ``torch.onnx.export`` (the transformer only:
``input_ids``, ``attention_mask``, ``token_type_ids`` -> ``last_hidden_state``), the pooling
(mean over the attention mask) and the L2 normalization in numpy, exactly as the model's
``1_Pooling`` / ``2_Normalize`` modules do. ``quantize=True`` adds a dynamically int8-quantized
copy (``onnxruntime.quantization.quantize_dynamic``: int8 weights, activations quantized at run
time).

The exported folder is self-contained (``model.onnx``, ``model_int8.onnx``, the tokenizer files,
``1_Pooling``) and can be shipped like any model folder or archive: ``embed_text --model FOLDER``
then encodes with ONNX Runtime (the int8 file when the folder has one), fingerprinted by that file.

    python -m spark_apps.common.onnx_encoder export MODEL_DIR OUT_DIR [--quantize]

Optional dependencies: ``onnx`` (export only) and ``onnxruntime`` (requirements-dev.txt).
"""

import argparse
import json
import os
import shutil

ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
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


def export(model_dir, out_dir, quantize=False, opset=17):
    """Export the transformer of ``model_dir`` to ``out_dir/model.onnx`` (+ int8 copy); returns ``out_dir``."""
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
    return out_dir


def model_file(folder):
    """The ONNX file an export folder is run with (the int8 copy when there is one), or None."""
    for name in (INT8_FILE, ONNX_FILE):
        if os.path.isfile(os.path.join(folder, name)):
            return name
    return None


class OnnxEncoder:
    """``encode(texts, batch_size, normalize_embeddings=True)`` like ``SentenceTransformer.encode``
    (float32 numpy rows in input order; texts sorted by length inside the call, as it does)."""

    def __init__(self, folder, file_name=ONNX_FILE, threads=None, max_seq_length=None):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(folder, file_name), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.max_seq_length = max_seq_length or _max_seq_length(folder)

    def encode(self, texts, batch_size=64, normalize_embeddings=True, **_ignored):
        import numpy as np

        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), 0), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            encoded = self.tokenizer(
                [texts[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="np",
            )
            feed = {k: v.astype(np.int64) for k, v in encoded.items() if k in self.inputs}
            if "token_type_ids" in self.inputs and "token_type_ids" not in feed:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            hidden = self.session.run(None, feed)[0]
            mask = feed["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            if normalize_embeddings:
                pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            if out.shape[1] == 0:
                out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
            out[chunk] = pooled
        return out


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
    args = parser.parse_args(argv)
    print(export(args.model_dir, args.out_dir, quantize=args.quantize))


if __name__ == "__main__":
    main()
