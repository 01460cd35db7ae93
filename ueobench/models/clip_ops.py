"""Small CLIP helpers shared by methods: prompt text, text and image embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.text import printable


def class_display_name(name: str) -> str:
    """``alarm_clock`` -> ``alarm clock``, as the reference code writes class names into prompts."""
    return name.replace("_", " ")


def openai_imagenet_templates() -> tuple[str, ...]:
    """CLIP's 80 ImageNet prompt templates as ``{}`` format strings, in open_clip's order (the list CaRot's and
    WiSE-FT's ``openai_imagenet_template.py`` copy)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def prompt_texts(template: str, class_names: list[str]) -> list[str]:
    return [template.format(class_display_name(c)) for c in class_names]


def check_prompt_lengths(tokenizer, texts: list[str], what: str = "prompt") -> None:
    """Refuse texts longer than the text tower's context: the tokenizer would cut them silently (a class name
    lost from its own prompt)."""
    context = getattr(tokenizer, "context_length", None)
    encode = getattr(tokenizer, "encode", None)
    if context is None or encode is None:
        return
    for text in texts:
        n = len(encode(text)) + 2  # start and end of text
        if n > context:
            from ..core.errors import UeobenchError

            raise UeobenchError(f"the {what} {printable(text[:80])!r}{'...' if len(text) > 80 else ''} is {n} tokens; "
                                f"the text tower takes at most {context} (start and end tokens included): shorten "
                                f"the template (or the context, n_ctx)")


@torch.no_grad()
def encode_texts(backbone, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings, [len(texts), D], fp32."""
    check_prompt_lengths(backbone.tokenizer, texts)
    dev = backbone.device
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = backbone.tokenizer(texts[i : i + batch_size]).to(dev)
        out.append(F.normalize(backbone.model.encode_text(tokens).float(), dim=-1))
    return torch.cat(out)


def encode_images(backbone, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings, fp32."""
    return F.normalize(backbone.model.encode_image(images.to(backbone.device)).float(), dim=-1)


def encode_images_raw(backbone, images: torch.Tensor) -> torch.Tensor:
    """Image embeddings before L2 normalisation, fp32 (what CLIP's linear-probe protocol fits on)."""
    return backbone.model.encode_image(images.to(backbone.device)).float()


def local_features_unsupported(backbone) -> str | None:
    """Why GL-MCM's local features cannot be taken from this backbone's image tower, or None when they can."""
    from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    visual = backbone.model.visual
    if isinstance(visual, ModifiedResNet):
        if not isinstance(getattr(visual, "attnpool", None), AttentionPool2d):
            return f"{backbone.spec.name} pools its feature map otherwise than by CLIP's attention pool"
        return None
    if not isinstance(visual, VisionTransformer):
        return (f"{backbone.spec.name} has a {type(visual).__name__} image tower; local features need a ViT or a "
                f"CLIP ResNet")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        return f"{backbone.spec.name} pools its tokens otherwise than by the class token"
    block = visual.transformer.resblocks[-1]
    if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, torch.nn.MultiheadAttention):
        return f"{backbone.spec.name} uses a custom attention block"
    return None


def encode_local(backbone, images: torch.Tensor) -> torch.Tensor:
    """GL-MCM's local features [B, patches, D], L2-normalised, fp32.

    As the reference computes them. ViT: the input x of the last block goes through that block's value path only
    (the value slice of the input projection, then the attention output projection), plus the residual, plus the
    block's MLP; then the tower's ``ln_post`` and ``proj``; the class token is dropped. CLIP ResNet: each position
    of the last feature map goes through the attention pool's value path, ``v_proj`` then ``c_proj`` (no
    positional embedding, no attention), row-major over the map. The image tower itself is run unchanged; a hook
    captures its input."""
    from open_clip.modified_resnet import ModifiedResNet

    reason = local_features_unsupported(backbone)
    if reason:
        from ..core.errors import UeobenchError

        raise UeobenchError(f"local features: {reason}")
    visual = backbone.model.visual
    if isinstance(visual, ModifiedResNet):
        return _resnet_local(visual, images.to(backbone.device))
    block = visual.transformer.resblocks[-1]
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, kwargs):
        captured["x"] = args[0] if args else kwargs["q_x"]

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        visual(images.to(backbone.device))
    finally:
        handle.remove()
    x = captured["x"]
    if not getattr(visual.transformer, "batch_first", True):
        x = x.transpose(0, 1)  # [B, L, C]
    width = x.shape[-1]
    attn = block.attn
    bias = attn.in_proj_bias[2 * width:] if attn.in_proj_bias is not None else None
    v = attn.out_proj(F.linear(block.ln_1(x), attn.in_proj_weight[2 * width:], bias))
    v = x + block.ls_1(v)
    v = v + block.ls_2(block.mlp(block.ln_2(v)))
    tokens = visual.ln_post(v)[:, 1:]
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return F.normalize(tokens.float(), dim=-1)


def _resnet_local(visual, images: torch.Tensor) -> torch.Tensor:
    pool = visual.attnpool
    captured: dict[str, torch.Tensor] = {}
    handle = pool.register_forward_pre_hook(lambda module, args: captured.__setitem__("x", args[0]))
    try:
        visual(images)
    finally:
        handle.remove()
    x = captured["x"]  # [B, C, H, W]
    tokens = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])  # row-major positions, [B, HW, C]
    tokens = F.linear(F.linear(tokens, pool.v_proj.weight, pool.v_proj.bias), pool.c_proj.weight, pool.c_proj.bias)
    return F.normalize(tokens.float(), dim=-1)
