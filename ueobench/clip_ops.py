"""Small CLIP helpers shared by methods: prompt text, text and image embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_display_name(name: str) -> str:
    """``alarm_clock`` -> ``alarm clock``, as the reference code writes class names into prompts."""
    return name.replace("_", " ")


def prompt_texts(template: str, class_names: list[str]) -> list[str]:
    return [template.format(class_display_name(c)) for c in class_names]


@torch.no_grad()
def encode_texts(backbone, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings, [len(texts), D], fp32."""
    dev = backbone.device
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = backbone.tokenizer(texts[i : i + batch_size]).to(dev)
        out.append(F.normalize(backbone.model.encode_text(tokens).float(), dim=-1))
    return torch.cat(out)


def encode_images(backbone, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings, fp32."""
    return F.normalize(backbone.model.encode_image(images.to(backbone.device)).float(), dim=-1)
