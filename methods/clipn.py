"""CLIPN (Wang et al., ICCV 2023; xmed-lab/CLIPN): zero-shot OOD detection with a second, "no" text encoder.

"CLIPN for zero-shot OOD detection: teaching CLIP to say no". Zero-shot, no adaptation. Needs the authors' CLIPN checkpoint, a CLIP with a second text encoder for "no"
prompts pretrained on CC-3M: ``--backbone ViT-B-16:/path/to/clipn.pt`` (ueobench reads the official layout).

As ``zero_shot_infer.py`` / ``classification.py`` of the reference: each class gets a "yes" and a "no" text
feature, the normalised sum of the normalised embeddings of every prompt template, encoded by the ordinary
and by the "no" text encoder. Predictions are the "yes" cosines; the "no" cosines are saved beside them
(``no_cos``) for the two scores of the paper, both at CLIPN's fixed scale of 100:

- ``--score ctw`` (competing-to-win): p_yes of the predicted class, p_yes_k = softmax(100·[cos_k, no_k])[0];
- ``--score atd`` (agreeing-to-differ): Σ_k p_yes_k · softmax(100·cos)_k.

Templates (``prompts=reference``): the reference's ``prompt.txt``, 64 ImageNet templates and the same 64 with
"of" read as "with", each line **including the single quotes** the file wraps it in (the official code formats
the raw line; two lines also keep a trailing comma). ``prompts=dataset`` uses the dataset's single template.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ueobench import (
    AdaptContext,
    Method,
    Options,
    UeobenchError,
    option,
    register_method,
)
from ueobench.models import check_prompt_lengths, class_display_name, encode_images

_OF = [
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a low resolution photo of the {}.",
    "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.",
    "a tattoo of a {}.", "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.",
    "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a low resolution photo of a {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.",
    "a blurry photo of a {}.", "art of a {}.", "a sketch of the {}.", "a pixelated photo of a {}.",
    "itap of the {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
]


def _with(template: str) -> str:
    if "in a video game" in template:
        return template.replace("in a video game", "appearing in a video game")
    return template.replace(" of ", " with ", 1)


def reference_templates() -> list[str]:
    """The 128 lines of the reference's prompt.txt as its code reads them (quotes included)."""
    lines = [f"'{t}'" for t in _OF + [_with(t) for t in _OF]]
    for i, line in enumerate(lines):
        if line in ("'a photo of a {}.'", "'a photo with a {}.'"):
            lines[i] = line + ","
    return lines


@torch.no_grad()
def _class_features(encode, tokenizer, templates: list[str], class_names: list[str], device) -> torch.Tensor:
    """normalize(Σ_templates normalize(encode(template.format(class)))), [K, D]."""
    total = None
    for t in templates:
        texts = [t.format(class_display_name(c)) for c in class_names]
        check_prompt_lengths(tokenizer, texts)
        tokens = tokenizer(texts).to(device)
        f = F.normalize(encode(tokens).float(), dim=-1)
        total = f if total is None else total + f
    return F.normalize(total, dim=-1)


@register_method("clipn")
class CLIPN(Method):
    display_name = "CLIPN"
    extras = ("no_cos",)

    @dataclass
    class Options(Options):
        prompts: str = option("reference", "reference: the 128 templates of the official prompt.txt; dataset: the "
                                           "dataset's template", choices=("reference", "dataset"))

    def setup(self, backbone, class_names: list[str], context: AdaptContext) -> None:
        super().setup(backbone, class_names, context)
        if backbone.no_text is None:
            raise UeobenchError(f"method clipn needs a CLIPN checkpoint with its 'no' text encoder; "
                                f"{backbone.spec.name} has none (use --backbone ARCH:/path/to/clipn.pt)")
        templates = reference_templates() if self.options.prompts == "reference" else [context.prompt]
        self.template = context.prompt if self.options.prompts == "dataset" else "CLIPN prompt.txt (128 templates)"
        dev = backbone.device
        self.yes = _class_features(backbone.model.encode_text, backbone.tokenizer, templates, class_names, dev)
        self.no = _class_features(backbone.no_text, backbone.tokenizer, templates, class_names, dev)

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.yes.T

    def extra_outputs(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"no_cos": features @ self.no.T}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_features(encode_images(self.backbone, images))

    def info(self) -> dict:
        return {"prompts": self.options.prompts, "score_rules": "--score ctw (competing-to-win) or atd "
                                                                "(agreeing-to-differ)"}
