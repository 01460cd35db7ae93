"""A CoOp-style prompt learner for the text tower of any open_clip CLIP model.

The prompt of class k is ``[SOT] ctx_1 .. ctx_n  <class tokens> . [EOT]``: n shared context vectors,
initialised from a phrase ("a photo of a") or at random (std 0.02), then the class name and a full stop.
Only ``ctx`` is a parameter; the text transformer stays frozen.

The text transformer is causal, so the feature at the end-of-text token depends only on the tokens before it.
``forward`` therefore runs the transformer only up to the longest end-of-text position among the prompts
(``truncate=True``), which gives the same output as the full 77-token pass up to float rounding.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .clip_ops import class_display_name
from .errors import UeobenchError


class TextTower:
    """The pieces of an open_clip text transformer, from a ``CLIP`` or a ``CustomTextCLIP`` model."""

    def __init__(self, model: nn.Module):
        src = model.text if hasattr(model, "text") and hasattr(model.text, "token_embedding") else model
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
        if not all(hasattr(src, n) for n in needed):
            raise UeobenchError(
                "this backbone's text tower is not an open_clip text transformer; prompt-learning methods need one "
                "(use an OpenAI-style CLIP such as ViT-B-16:openai or RN50:openai)"
            )
        self.src = src
        self.pool_type = getattr(src, "text_pool_type", getattr(src, "pool_type", "argmax"))
        if self.pool_type not in ("argmax", "eos"):
            raise UeobenchError(f"text pooling '{self.pool_type}' is not supported by the prompt learner")
        self.eos_id = getattr(src, "text_eos_id", getattr(src, "eos_id", None))

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "eos" and self.eos_id is not None:
            return (tokens == self.eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.src.token_embedding(tokens)

    def encode_embeddings(self, x: torch.Tensor, eot: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """Token embeddings [P, L, D] -> projected text features [P, E] taken at the end-of-text positions."""
        src = self.src
        length = int(eot.max().item()) + 1 if truncate else x.shape[1]
        x = x[:, :length]
        cast = src.transformer.get_cast_dtype() if hasattr(src.transformer, "get_cast_dtype") else x.dtype
        x = x.to(cast) + src.positional_embedding[:length].to(cast)
        mask = src.attn_mask[:length, :length] if src.attn_mask is not None else None
        x = src.transformer(x, attn_mask=mask)
        x = src.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = src.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x


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
            tokens = tokenizer([f"{prefix_text} {n}." for n in names]).to(device)
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
