"""A CoOp-style prompt learner for the text tower of any open_clip CLIP model.

The prompt of class k is ``[SOT] ctx_1 .. ctx_n  <class tokens> . [EOT]``: n shared context vectors,
initialised from a phrase ("a photo of a") or at random (std 0.02), then the class name and a full stop.
Only ``ctx`` is a parameter; the text transformer stays frozen.

The text transformer is causal, so the feature at the end-of-text token depends only on the tokens before it.
``forward`` therefore runs the transformer only up to the longest end-of-text position among the prompts
(``truncate=True``, ``ueobench.models.text_tower``), which gives the same output as the full 77-token pass up to
float rounding.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import UeobenchError
from ..models.clip_ops import check_prompt_lengths, class_display_name
from ..models.text_tower import TextTower


class PromptLearner(nn.Module):
    """Learnable shared context vectors in front of each class name."""

    def __init__(self, backbone: Any, class_names: list[str], n_ctx: int = 4, init: str | None = "a photo of a",
                 init_std: float = 0.02, truncate: bool = True):
        super().__init__()
        self.tower = TextTower(backbone.model)
        self.truncate = truncate
        tokenizer, device = backbone.tokenizer, backbone.device
        names = [class_display_name(c) for c in class_names]
        with torch.no_grad():
            if init:
                init_ids = tokenizer([init])[0]
                n_init = int(self.tower.eot_positions(init_ids[None])[0]) - 1
                if n_init != n_ctx:
                    raise UeobenchError(f"context init {init!r} is {n_init} tokens but n_ctx is {n_ctx}; make them agree")
                ctx = self.tower.embed_tokens(init_ids[None].to(device))[0, 1 : 1 + n_ctx].float()
                prefix_text = init
            else:
                width = self.tower.src.token_embedding.weight.shape[1]
                ctx = torch.empty(n_ctx, width, device=device).normal_(0, init_std)
                prefix_text = " ".join(["X"] * n_ctx)
            texts = [f"{prefix_text} {n}." for n in names]
            check_prompt_lengths(tokenizer, texts, f"prompt of {n_ctx} context tokens and a class name")
            tokens = tokenizer(texts).to(device)
            emb = self.tower.embed_tokens(tokens).float()
        self.ctx = nn.Parameter(ctx.clone())
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", emb[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", emb[:, 1 + n_ctx :].clone(), persistent=False)
        self.register_buffer("eot", self.tower.eot_positions(tokens), persistent=False)
        self.n_ctx = n_ctx
        self.init_text = init

    def forward(self) -> torch.Tensor:
        """L2-normalised text features of every class prompt, [K, E]."""
        k = self.prefix.shape[0]
        ctx = self.ctx.unsqueeze(0).expand(k, -1, -1).to(self.prefix.dtype)
        x = torch.cat([self.prefix, ctx, self.suffix], dim=1)
        return F.normalize(self.tower.encode_embeddings(x, self.eot, self.truncate).float(), dim=-1)
