"""The CTranslate2 engine of llm_transform (``--engine ctranslate2``): a seq2seq model converted
once from its transformers directory, then shipped and resolved like any model directory.

    python -m spark_apps.common.ct2 convert /models/flan-t5-small /models/flan-t5-small-ct2

The converted directory holds ``model.bin`` (float32 weights unless ``--quantization`` says
otherwise), CTranslate2's ``config.json`` and a copy of the tokenizer files. The compute type
(int8, int8_float32, float32) is chosen when the model is loaded, so one float32 conversion
serves all of them; CPU threads per model come from ``spark.task.cpus``.
"""

import argparse
import json
import os

COMPUTE_TYPES = ("int8", "int8_float32", "float32")
MODEL_FILE = "model.bin"
#: copied next to model.bin: the job tokenizes with transformers' AutoTokenizer
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "vocab.txt",
    "added_tokens.json",
    "README.md",
)


class NotConvertedError(FileNotFoundError):
    pass


def is_converted(model_dir):
    return os.path.isfile(os.path.join(model_dir, MODEL_FILE))


def convert(model_dir, out_dir, quantization=None, force=False):
    """Convert the transformers seq2seq directory ``model_dir`` into ``out_dir``; returns it."""
    import ctranslate2

    copy = [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(model_dir, name))]
    converter = ctranslate2.converters.TransformersConverter(model_dir, copy_files=copy)
    converter.convert(out_dir, quantization=quantization, force=force)
    _fill_end_token(model_dir, out_dir)
    return out_dir


def _fill_end_token(model_dir, out_dir):
    """The converter takes the end token from the tokenizer; a tokenizer that does not name one
    (a WordPiece one, as in the tests' tiny T5) leaves it null and decoding would never stop at
    the model's ``eos_token_id``. Name it from the model's own config then."""
    from transformers import AutoConfig, AutoTokenizer

    path = os.path.join(out_dir, "config.json")
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    if config.get("eos_token"):
        return
    eos_id = AutoConfig.from_pretrained(model_dir, local_files_only=True).eos_token_id
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    config["eos_token"] = tokenizer.convert_ids_to_tokens(eos_id)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)


def load(model_dir, compute_type="int8", threads=1):
    """``(tokenizer, ctranslate2.Translator)`` of a converted directory, on the CPU."""
    if not is_converted(model_dir):
        raise NotConvertedError(
            f"{model_dir} has no {MODEL_FILE}: --engine ctranslate2 needs a converted model "
            "(python -m spark_apps.common.ct2 convert MODEL_DIR OUT_DIR)"
        )
    import ctranslate2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    translator = ctranslate2.Translator(
        model_dir, device="cpu", compute_type=compute_type, inter_threads=1, intra_threads=int(threads)
    )
    return tokenizer, translator


def generate_texts(tokenizer, translator, prompts, batch_size, max_new_tokens, max_input_tokens=512, min_new_tokens=0):
    """Greedy decoding of ``prompts`` as ``inference.generate_texts`` does it with transformers:
    prompts truncated to ``max_input_tokens``, grouped by token length (less padding), outputs
    in input order."""
    ids = tokenizer(list(prompts), truncation=True, max_length=max_input_tokens, verbose=False)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    results = translator.translate_batch(
        [tokenizer.convert_ids_to_tokens(ids[i]) for i in order],
        max_batch_size=batch_size,
        beam_size=1,
        max_decoding_length=max_new_tokens,
        min_decoding_length=min_new_tokens,
    )
    outputs = [None] * len(ids)
    for i, result in zip(order, results):
        tokens = tokenizer.convert_tokens_to_ids(result.hypotheses[0])
        outputs[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return outputs


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m spark_apps.common.ct2", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    conv = commands.add_parser("convert", help="convert a transformers seq2seq directory for CTranslate2")
    conv.add_argument("model_dir")
    conv.add_argument("out_dir")
    conv.add_argument(
        "--quantization",
        choices=COMPUTE_TYPES,
        default=None,
        help="store the weights quantized (smaller archive); default: float32, any compute type at load",
    )
    conv.add_argument("--force", action="store_true", help="overwrite out_dir")
    args = parser.parse_args(argv)
    print(convert(args.model_dir, args.out_dir, args.quantization, args.force))


if __name__ == "__main__":
    main()
