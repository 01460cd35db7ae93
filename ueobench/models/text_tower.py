"""The pieces of an open_clip text transformer, so prompt learners and pretraining can run it on embeddings.

The tower is causal: the feature at the end-of-text token depends only on the tokens before it, so
``encode_embeddings`` runs it only up to the longest end-of-text position (``truncate``), which matches the full
77-token pass up to float rounding.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core.errors import UeobenchError


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
