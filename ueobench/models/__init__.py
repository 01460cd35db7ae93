"""Models: open_clip backbones (``ARCH:WEIGHTS``), CLIP helpers for methods, CLIPN checkpoints, the text tower,
norm-parameter selection, and pretraining of the built-in tiny CLIPs.

What method authors use (``encode_images``, ``encode_texts``, ``prompt_texts``, ...) is importable from here;
it loads torch on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "encode_images": "clip_ops", "encode_images_raw": "clip_ops", "encode_texts": "clip_ops", "encode_local": "clip_ops", "prompt_texts": "clip_ops",
    "openai_imagenet_templates": "clip_ops",
    "class_display_name": "clip_ops", "check_prompt_lengths": "clip_ops", "Backbone": "backbones", "load_backbone": "backbones",
    "norm_parameters": "norms", "batchnorms": "norms", "TextTower": "text_tower",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ueobench.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ueobench.models.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
