"""Local checkpoints, read by ueobench itself: never unpickled, checked before use, identified by content.

A checkpoint file is read as safetensors, or as a torch file with ``weights_only=True`` passed explicitly (so
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, a common cluster setting, cannot turn it into a code-executing unpickle),
with no fallback; a file that needs pickled objects is refused. open_clip's conversions of third-party and
older layouts are then applied as its own loader applies them, and every tensor must be floating point and
finite, including the logit scale and its exponential.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UeobenchError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (safetensors or torch), unwrapped from ``state_dict`` and ``module.``."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors, zip and unpickler errors alike: the file is not usable
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UeobenchError(f"cannot read checkpoint {path} ({first[:300]}); ueobench loads only tensors "
                            f"(safetensors, or torch files that load with weights_only=True), never pickled code")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UeobenchError(f"checkpoint {path} holds no state dict of tensors; pass CLIP weights "
                            f"(a safetensors file, or a torch file of tensors)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_tensors(state: dict[str, torch.Tensor], where: str) -> None:
    """Every weight floating point and finite; a usable logit scale. One line naming the first bad tensor."""
    for k, v in state.items():
        if not (v.is_floating_point() or v.dtype == torch.bool):
            if k.endswith(("position_ids", "num_batches_tracked", "attn_mask")):
                continue
            raise UeobenchError(f"{where}: tensor '{k}' is {str(v.dtype).replace('torch.', '')}, not floating "
                                f"point; this is not a CLIP checkpoint")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise UeobenchError(f"{where}: tensor '{k}' holds NaN or infinite values; the checkpoint is damaged")
    scale = state.get("logit_scale")
    if scale is not None and scale.numel() >= 1:
        value = float(scale.float().flatten()[0])
        if not (math.isfinite(value) and value < 80):  # exp(88) overflows fp32
            raise UeobenchError(f"{where}: logit_scale is {value}, whose exp is not a usable temperature; the "
                                f"checkpoint is damaged")


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into an open_clip model the way open_clip's ``load_checkpoint`` does (layout conversions,
    positional-embedding resizing), strictly."""
    from open_clip.factory import convert_state_dict, resize_pos_embed, resize_text_pos_embed
    from open_clip.model import convert_to_custom_text_state_dict

    state = convert_state_dict(model, dict(state))
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    if "logit_scale" in state and model.logit_scale.ndim != state["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    if getattr(model, "logit_bias", None) is not None:
        if "logit_bias" in state and model.logit_bias.ndim != state["logit_bias"].ndim:
            state["logit_bias"] = state["logit_bias"].reshape(model.logit_bias.shape)
        state.setdefault("logit_bias", torch.zeros_like(state["logit_scale"]))
    state.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    check_tensors(state, where)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UeobenchError(f"{where} does not fit the architecture ({first[:300]}); name the architecture the "
                            f"checkpoint was trained with (ueobench list backbones)") from None
