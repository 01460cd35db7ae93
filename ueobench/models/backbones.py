"""Backbones: any open_clip architecture and weights, named ``ARCH:WEIGHTS``.

``WEIGHTS`` is an open_clip pretrained tag (``ViT-B-16:openai``), a local checkpoint path
(``RN50:/ckpt/rn50.safetensors``) or ``random`` (only when asked for by name). ``hf-hub:org/repo`` and
``local-dir:/path`` name a model and its weights at once. Weights that cannot be had are an error, never a
silent fallback to random weights.

The activation follows the weights: a pretrained tag whose open_clip configuration says ``quick_gelu`` (every
``openai`` tag, and a few others) was trained with QuickGELU, so the model is built with QuickGELU whatever the
architecture's own default. open_clip 3.x only warns about the mismatch; OpenAI's ``clip.load``, which every
reference implementation uses, builds QuickGELU. A local checkpoint uses the architecture named: name
``ARCH-quickgelu`` for OpenAI weights.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UeobenchError
from ..core.hashing import file_sha256
from ..core.registry import suggest
from .checkpoints import load_into, read_state_dict
from .configs import builtin_architectures

SCHEMES = ("hf-hub:", "local-dir:")
_CONFIGS_ADDED = False


def register_model_configs() -> None:
    """Make ueobench's tiny architectures known to open_clip (idempotent)."""
    global _CONFIGS_ADDED
    if _CONFIGS_ADDED:
        return
    import open_clip

    open_clip.add_model_config(Path(str(resources.files("ueobench.model_configs"))))
    _CONFIGS_ADDED = True


def weights_checksum(path: str | Path) -> str:
    return file_sha256(path)


def builtin_weights(arch: str, folder: Path | None = None) -> Path:
    """Path of weights shipped with ueobench for ``arch``, verified against the shipped checksum."""
    folder = folder or Path(str(resources.files("ueobench.weights")))
    path, digest_file = folder / f"{arch}.safetensors", folder / f"{arch}.sha256"
    if not path.is_file() or not digest_file.is_file():
        have = sorted(p.stem for p in folder.glob("*.safetensors"))
        raise UeobenchError(f"no built-in weights for '{arch}' (built-in: {', '.join(have) or 'none'})")
    from ..core.content import content_hashes

    expected = digest_file.read_text().split()[0]
    if content_hashes().sha256(path) != expected:
        raise UeobenchError(
            f"built-in weights {path} are corrupt (SHA-256 does not match {digest_file.name}); reinstall ueobench "
            f"or retrain them with 'ueobench pretrain shapes'"
        )
    return path


@dataclass(frozen=True)
class BackboneSpec:
    arch: str
    weights: str | None  # None: weights come with the scheme (hf-hub:, local-dir:)

    @property
    def name(self) -> str:
        return self.arch if self.weights is None else f"{self.arch}:{self.weights}"

    @property
    def is_random(self) -> bool:
        return self.weights == "random"


def parse_spec(spec: str) -> BackboneSpec:
    spec = spec.strip()
    if spec.startswith(SCHEMES):
        return BackboneSpec(spec, None)
    arch, sep, weights = spec.partition(":")
    if not sep or not arch or not weights:
        raise UeobenchError(
            f"backbone '{spec}' names no weights; use ARCH:TAG (e.g. ViT-B-16:openai), ARCH:/path/to/checkpoint, "
            f"ARCH:random, or hf-hub:ORG/REPO (ueobench list backbones)"
        )
    return BackboneSpec(arch, weights)


@dataclass
class Backbone:
    """An open_clip model with its tokenizer and eval transform."""

    spec: BackboneSpec
    model: torch.nn.Module
    tokenizer: Any
    preprocess: Any  # the model's own CLIP eval transform
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict[str, Any]
    #: CLIPN's "no" text encoder, when the checkpoint has one (``clipn_checkpoint``)
    no_text: Any = None

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().item())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def tag_uses_quick_gelu(arch: str, tag: str) -> bool:
    """True when open_clip's configuration of the pretrained tag says its weights were trained with QuickGELU."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    return bool(cfg.get("quick_gelu", False))


def activation(spec: str | BackboneSpec) -> str:
    """The activation a backbone is built with (part of a run's identity): "quick_gelu" or "gelu".

    Derived from open_clip's model and pretrained-tag configurations, so it needs no weights. Schemes whose
    configuration lives with the weights (``hf-hub:``, ``local-dir:``) report "from-checkpoint-config".
    """
    import open_clip

    register_model_configs()
    s = parse_spec(spec) if isinstance(spec, str) else spec
    if s.weights is None:
        return "from-checkpoint-config"
    cfg = open_clip.get_model_config(s.arch) or {}
    if cfg.get("quick_gelu", False):
        return "quick_gelu"
    if s.weights not in ("random", "builtin") and tag_uses_quick_gelu(s.arch, s.weights):
        return "quick_gelu"
    return "gelu"


@dataclass(frozen=True)
class ResolvedBackbone:
    """What planning needs of a backbone: its parsed name, the activation it is built with, and the identity of
    its weights (no model is built)."""

    spec: BackboneSpec
    activation: str
    weights: str


def _looks_like_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def weights_identity(s: BackboneSpec) -> str:
    """What the weights are, as part of a run's identity: the SHA-256 of a local checkpoint's bytes (built-in
    weights included, so retrained built-ins are never mixed with the shipped ones), every file of a
    ``local-dir:`` folder, or the name of weights that come from a hub (an open_clip tag, ``hf-hub:``)."""
    from ..core.content import content_hashes

    hashes = content_hashes()
    if s.weights is None:
        if s.arch.startswith("local-dir:"):
            folder = Path(s.arch[len("local-dir:"):]).expanduser()
            files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
            if not files:
                raise UeobenchError(f"backbone folder {folder} holds no files; pass local-dir:/path/to/model_folder")
            return "sha256:" + hashlib.sha256("".join(f"{p.relative_to(folder)} {hashes.sha256(p)}\n"
                                                      for p in files).encode()).hexdigest()
        return s.arch  # hf-hub:ORG/REPO: named, not downloaded while planning
    if s.weights == "random":
        return "random"
    if s.weights == "builtin":
        return "sha256:" + hashes.sha256(builtin_weights(s.arch))
    if _looks_like_path(s.weights):
        path = Path(s.weights).expanduser()
        if not path.is_file():
            raise UeobenchError(f"checkpoint {s.weights} not found; pass an existing file as {s.arch}:/path/to/weights")
        return "sha256:" + hashes.sha256(path)
    return f"tag:{s.weights}"


def resolve_backbone(text: str) -> ResolvedBackbone:
    spec = parse_spec(text)
    return ResolvedBackbone(spec, activation(spec), weights_identity(spec))


def load_backbone(spec: str | BackboneSpec, device: str | torch.device = "cpu") -> Backbone:
    import open_clip

    register_model_configs()
    s = parse_spec(spec) if isinstance(spec, str) else spec
    pretrained: str | None = None
    force_quick_gelu = False
    if s.weights is not None:
        if s.arch not in open_clip.list_models():
            raise UeobenchError(
                f"unknown backbone architecture '{s.arch}'{suggest(s.arch, open_clip.list_models())} "
                f"(ueobench list backbones)"
            )
        if s.weights == "builtin":
            pretrained = str(builtin_weights(s.arch))
        elif s.weights != "random":
            pretrained = s.weights
            looks_like_path = _looks_like_path(s.weights)
            if looks_like_path and not Path(s.weights).expanduser().is_file():
                raise UeobenchError(f"checkpoint {s.weights} not found; pass an existing file as {s.arch}:/path/to/weights")
            if looks_like_path:
                pretrained = str(Path(s.weights).expanduser())
            elif s.weights not in open_clip.list_pretrained_tags_by_model(s.arch):
                tags = open_clip.list_pretrained_tags_by_model(s.arch) + ["random"]
                raise UeobenchError(f"unknown weights '{s.weights}' for {s.arch}{suggest(s.weights, tags)}")
            else:  # a pretrained tag: build the activation its weights were trained with
                force_quick_gelu = tag_uses_quick_gelu(s.arch, s.weights)
    local = pretrained is not None and (s.weights == "builtin" or os.path.isfile(pretrained))
    state = read_state_dict(pretrained) if local else None  # ours to read: never unpickled, checked
    clipn_state = _clipn_parts(state, pretrained) if state is not None else None
    log = logging.getLogger()
    level = log.level
    try:
        if s.is_random or local:  # open_clip's "initialized randomly" warning is wrong or adds nothing here
            log.setLevel(logging.ERROR)
        model, _, preprocess = open_clip.create_model_and_transforms(
            s.arch, pretrained=None if local else pretrained, device=device, weights_only=True,
            force_quick_gelu=force_quick_gelu
        )
    except Exception as e:  # noqa: BLE001 - open_clip raises RuntimeError, OSError, HF errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UeobenchError(
            f"cannot load backbone '{s.name}' ({first}); without network access, download the weights once "
            f"elsewhere and pass a local file as ARCH:/path/to/weights.safetensors"
        ) from None
    finally:
        log.setLevel(level)
    no_text = None
    if state is not None:
        load_into(model, clipn_state[0] if clipn_state else state, f"checkpoint {pretrained}")
        model.to(device)
    if clipn_state:
        from .clipn_checkpoint import NoTextEncoder

        no_text = NoTextEncoder(model, clipn_state[1], f"checkpoint {pretrained}").to(device).eval()
    model.eval()
    tokenizer = open_clip.get_tokenizer(s.arch)
    pp = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
    size = pp.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    info = {
        "backbone": s.name,
        "arch": s.arch,
        "weights": s.weights,
        "weights_identity": weights_identity(s),
        "random_weights": s.is_random,
        "quick_gelu": _uses_quick_gelu(model),
        "activation": "quick_gelu" if _uses_quick_gelu(model) else "gelu",
        "image_size": int(size),
        "interpolation": pp.get("interpolation", "bicubic"),
        "resize_mode": pp.get("resize_mode", "shortest"),
        "mean": list(pp.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        "std": list(pp.get("std", (0.26862954, 0.26130258, 0.27577711))),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if no_text is not None:
        info["clipn_no_encoder"] = True
    return Backbone(s, model, tokenizer, preprocess, int(size), tuple(info["mean"]), tuple(info["std"]), info,
                    no_text)


def _clipn_parts(state: dict, path: str) -> tuple[dict, dict] | None:
    """The (CLIP, "no" encoder) parts of a checkpoint in CLIPN's layout, or None for any other checkpoint."""
    from .clipn_checkpoint import is_clipn, split_state

    if any(k.startswith("transformer_no.") for k in state) and "prompt_no" not in state:
        raise UeobenchError(f"checkpoint {path} is CLIPN's hand-crafted-prompt release (a 'no' text encoder without "
                            f"learnable 'no' prompts, prompt_no); ueobench reads the learnable-prompt release of "
                            f"xmed-lab/CLIPN (src/), whose checkpoints hold prompt_no")
    return split_state(state) if is_clipn(state) else None


def _uses_quick_gelu(model: torch.nn.Module) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


def list_backbones() -> list[dict[str, str]]:
    """Every (architecture, weights) pair open_clip knows, plus ueobench's tiny architectures (the command line
    reads it from ``ueobench.models.catalog``, cached)."""
    import open_clip

    register_model_configs()
    folder = Path(str(resources.files("ueobench.weights")))
    rows = [{"backbone": f"{p.stem}:builtin", "source": "ueobench, shipped pretrained weights (checksummed)"}
            for p in sorted(folder.glob("*.safetensors"))]
    rows += [{"backbone": f"{a}:random", "source": "ueobench tiny architecture (random weights)"} for a in builtin_architectures()]
    for arch, tag in open_clip.list_pretrained():
        act = "QuickGELU" if tag_uses_quick_gelu(arch, tag) or "quickgelu" in arch else "GELU"
        rows.append({"backbone": f"{arch}:{tag}", "source": f"open_clip pretrained, {act} (downloads on first use)"})
    for arch in sorted(a for a in open_clip.list_models() if a.endswith("-quickgelu")):
        rows.append({"backbone": f"{arch}:/path/to/checkpoint",
                     "source": "QuickGELU architecture: name it for local OpenAI checkpoints"})
    return rows
