"""Zero-shot CLIP: cosine similarity between the image and "a photo of a {class}." (no adaptation)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ueobench import AdaptContext, Method, Options, option, register_method
from ueobench.models import encode_images, encode_texts, prompt_texts


@register_method("zeroshot")
class ZeroShot(Method):
    display_name = "Zero-shot"
    @dataclass
    class Options(Options):
        prompt: str | None = option(None, "prompt template with {} for the class name (default: the dataset's)",
                                    contains="{}")

    def setup(self, backbone, class_names: list[str], context: AdaptContext) -> None:
        super().setup(backbone, class_names, context)
        self.template = self.options.prompt or context.prompt
        self.text = encode_texts(backbone, prompt_texts(self.template, class_names))

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.text.T

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_features(encode_images(self.backbone, images))
