"""CTranslate2 int8 / transformers ``generate``, bare, at the flan-t5-small shape: one process per
setting, so environment knobs that CTranslate2 and OpenMP read at load time can be compared.

Each run alternates the two engines ``--rounds`` times on the same prompts (batch 16, exactly
``--max-new-tokens`` new tokens, 2 threads) with bench/seq2seq_shapes.py's ``bare_rate``; the
model is the random-weight flan-t5-small that script builds (and converts) under ``--models``.

    source scripts/env.sh
    for knobs in "OMP_WAIT_POLICY=PASSIVE" "OMP_WAIT_POLICY=ACTIVE" "OMP_WAIT_POLICY=PASSIVE CT2_USE_MKL=1" \\
                 "OMP_WAIT_POLICY=PASSIVE CT2_USE_EXPERIMENTAL_PACKED_GEMM=1"; do
      env $knobs python bench/ct2_knobs.py --label "$knobs"
    done
"""

import argparse
import os
import sys

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import seq2seq_shapes  # noqa: E402  (sets OMP_WAIT_POLICY=PASSIVE unless it is set)
from embed_vs_bare import rows_of, sts_sentences  # noqa: E402

from spark_apps.jobs.llm_transform import DEFAULT_PROMPT  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="")
    parser.add_argument("--shape", default="small", choices=sorted(seq2seq_shapes.SHAPES))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--models", default=seq2seq_shapes.parse_args([]).models)
    args = parser.parse_args(argv)
    model_dir = seq2seq_shapes.build_t5(args.shape, os.path.join(args.models, f"random-flan-t5-{args.shape}"))
    ct2_dir = seq2seq_shapes.convert_ct2(model_dir)
    settings = argparse.Namespace(cores=2, batch_size=16, max_new_tokens=args.max_new_tokens)
    prompts = [DEFAULT_PROMPT.replace("{text}", t) for t in rows_of(sts_sentences(), args.prompts)]
    for number in range(args.rounds):
        torch_rate = seq2seq_shapes.bare_rate("transformers", model_dir, prompts, settings)
        ct2_rate = seq2seq_shapes.bare_rate("ctranslate2", ct2_dir, prompts, settings, "int8")
        print(
            f"{args.label} round {number + 1}: transformers {torch_rate:.1f} prompts/s, ct2 int8 {ct2_rate:.1f} "
            f"prompts/s, ratio {ct2_rate / torch_rate:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
