"""Expected model outputs computed without Spindle: each model called directly through its own
library, one item at a time (no batching, no padding, no Spark)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def cosines(a, b) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped arrays of vectors."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def bare_text_vectors(model_dir: str | Path, texts: Sequence[str]) -> np.ndarray:
    """sentence-transformers' own ``encode``, L2-normalized."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    return model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)


def clip_reference(clip_dir: str | Path) -> dict:
    """transformers' own CLIP objects: the model, the default PIL image processor, the tokenizer."""
    from transformers import CLIPModel, CLIPTokenizer

    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers >= 5
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    return {"model": model, "processor": Processor(), "tokenizer": CLIPTokenizer.from_pretrained(str(clip_dir))}


def _features(output):
    return output if torch.is_tensor(output) else output.pooler_output


def direct_image_vectors(reference: dict, paths: Sequence[str | Path]) -> np.ndarray:
    """Per image: PIL RGB -> processor -> ``get_image_features`` -> L2 normalize."""
    from PIL import Image

    rows = []
    with torch.no_grad():
        for path in paths:
            pixels = reference["processor"](images=Image.open(path).convert("RGB"), return_tensors="pt")
            vector = _features(reference["model"].get_image_features(pixel_values=pixels["pixel_values"]))[0]
            rows.append((vector / vector.norm()).numpy())
    return np.stack(rows)


def direct_text_vectors(reference: dict, texts: Sequence[str]) -> np.ndarray:
    """Per text: CLIP tokenizer (77 tokens) -> ``get_text_features`` -> L2 normalize."""
    rows = []
    with torch.no_grad():
        for text in texts:
            encoded = reference["tokenizer"](text, truncation=True, max_length=77, return_tensors="pt")
            vector = _features(reference["model"].get_text_features(**encoded))[0]
            rows.append((vector / vector.norm()).numpy())
    return np.stack(rows)


def direct_generate(
    model_dir: str | Path, prompts: Sequence[str], max_new_tokens: int, max_input_tokens: int | None = None
) -> list[str]:
    """What the LLM job must produce: greedy ``generate`` per prompt, no batching, no padding;
    each prompt cut to ``max_input_tokens`` when given."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).eval()
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            cut = max_input_tokens is not None
            encoded = tokenizer(prompt, return_tensors="pt", truncation=cut, max_length=max_input_tokens)
            ids = model.generate(
                input_ids=encoded["input_ids"],
                attention_mask=encoded["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
            )
            outputs.append(tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    return outputs
