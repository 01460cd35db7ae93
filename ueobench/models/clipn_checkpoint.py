"""Checkpoints in CLIPN's layout (Wang et al., ICCV 2023; xmed-lab/CLIPN): a CLIP plus a second, "no" text encoder.

The authors' training code saves ``{"epoch", "name", "state_dict", "optimizer"}`` with ``module.``-prefixed keys
(DistributedDataParallel). Besides the usual CLIP keys, the "no" encoder has its own ``token_embedding_no``,
``positional_embedding_no``, ``transformer_no.*``, ``ln_final_no``, ``text_projection_no`` and ``prompt_no``
[16, context, width], the learnable "no" prompts. At inference the official code adds the *mean* of the 16
prompts to the token and position embeddings, runs the "no" transformer with the causal mask, takes the
end-of-text token after ``ln_final_no`` and projects it.

``ARCH:/path/to/clipn.pt`` (the architecture the authors trained, e.g. ViT-B-16) loads such a file: the CLIP part
into open_clip's model, the "no" part into :class:`NoTextEncoder`, attached to the backbone.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoints import read_state_dict  # noqa: F401 (the official layout is read as any checkpoint)

NO_PREFIXES = ("token_embedding_no", "positional_embedding_no", "transformer_no.", "ln_final_no.",
               "text_projection_no", "prompt_no")


def is_clipn(state: dict[str, Any]) -> bool:
    return any(k.startswith("transformer_no.") for k in state) and "prompt_no" in state


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the CLIP part, the "no" part with the ``_no`` suffixes removed from its names)."""
    clip, no = {}, {}
    for k, v in state.items():
        if k.startswith(NO_PREFIXES):
            if k == "prompt_no":
                no["prompt_no"] = v
            else:
                head, _, rest = k.partition(".")
                no[head[: -len("_no")] + ("." + rest if rest else "")] = v
        else:
            clip[k] = v
    return clip, no


class NoTextEncoder(nn.Module):
    """CLIPN's "no" text encoder, built with the same structure as the model's own text tower."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor], where: str = "checkpoint"):
        super().__init__()
        from ..core.errors import UeobenchError
        from .checkpoints import check_tensors

        width = model.token_embedding.weight.shape[1]
        ctx = model.positional_embedding.shape[0]
        prompt = state["prompt_no"]
        if prompt.ndim != 3 or tuple(prompt.shape[1:]) != (ctx, width):
            raise UeobenchError(f"{where}: prompt_no has shape {list(prompt.shape)}; CLIPN's 'no' prompts are "
                                f"[prompts, {ctx}, {width}] for this architecture (context length, width)")
        check_tensors(state, where)
        self.token_embedding = copy.deepcopy(model.token_embedding)
        self.positional_embedding = nn.Parameter(torch.empty_like(model.positional_embedding))
        self.transformer = copy.deepcopy(model.transformer)
        self.ln_final = copy.deepcopy(model.ln_final)
        self.text_projection = nn.Parameter(torch.empty_like(model.text_projection))
        self.prompt_no = nn.Parameter(torch.empty_like(state["prompt_no"]))
        self.register_buffer("attn_mask", model.attn_mask.clone() if model.attn_mask is not None else None,
                             persistent=False)
        self.load_state_dict(state, strict=True)
        self.requires_grad_(False)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text) + self.positional_embedding + self.prompt_no.mean(0, keepdim=True)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        return x @ self.text_projection


def save_clipn_checkpoint(model: nn.Module, no_state: dict[str, torch.Tensor], path: str | Path, epoch: int = 10) -> None:
    """Write a CLIP and a "no" encoder in the official layout (``module.`` keys inside ``state_dict``): used to
    test the loader with tiny random models, since the authors' weights cannot be downloaded here."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    for k, v in no_state.items():
        if k == "prompt_no":
            state["module.prompt_no"] = v
        else:
            head, _, rest = k.partition(".")
            state[f"module.{head}_no" + ("." + rest if rest else "")] = v
    torch.save({"epoch": epoch, "name": "clipn", "state_dict": state}, str(path))
