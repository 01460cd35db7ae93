"""OpenAI weights run through QuickGELU, as ``clip.load`` builds them (issue: wrong activation on real backbones).

No download: open_clip's downloader is pointed at a local checkpoint of the right shape, saved with random values
from the ``-quickgelu`` architecture, and the model ueobench builds for ``ARCH:openai`` must be that model.
"""
from __future__ import annotations

import pytest
import torch

from ueobench.models import backbones


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("openai-shaped")
    out = {}
    for arch in ("ViT-B-16", "RN50"):
        torch.manual_seed(0)
        model = open_clip.create_model(f"{arch}-quickgelu")
        path = folder / f"{arch}.pt"
        torch.save(model.state_dict(), path)
        out[arch] = (path, model.eval())
    return out


def _count_quick_gelu(model: torch.nn.Module) -> int:
    from open_clip.transformer import QuickGELU

    return sum(isinstance(m, QuickGELU) for m in model.modules())


@pytest.mark.parametrize("arch", ["ViT-B-16", "RN50"])
def test_openai_tag_builds_quick_gelu_and_matches_the_quickgelu_model(arch, checkpoints, monkeypatch):
    import open_clip.factory

    path, reference = checkpoints[arch]
    asked = []

    def local_download(cfg, *a, **k):
        asked.append(cfg)
        return str(path)

    monkeypatch.setattr(open_clip.factory, "download_pretrained", local_download)
    b = backbones.load_backbone(f"{arch}:openai")
    assert asked and asked[0].get("quick_gelu") is True  # the tag's own configuration was consulted
    assert _count_quick_gelu(b.model) > 0 and _count_quick_gelu(b.model) == _count_quick_gelu(reference)
    assert b.info["quick_gelu"] is True and b.info["activation"] == "quick_gelu"
    torch.manual_seed(1)
    images = torch.randn(2, 3, 224, 224)
    tokens = b.tokenizer(["a photo of a cat.", "a photo of a dog."])
    with torch.no_grad():
        assert torch.allclose(b.model.encode_image(images), reference.encode_image(images), atol=1e-5)
        assert torch.allclose(b.model.encode_text(tokens), reference.encode_text(tokens), atol=1e-5)


def test_activation_is_derived_from_open_clip_configuration_for_every_tag():
    import open_clip

    tagged = [(a, t) for a, t in open_clip.list_pretrained() if (open_clip.get_pretrained_cfg(a, t) or {}).get("quick_gelu")]
    assert ("ViT-B-16", "openai") in tagged and ("RN50", "openai") in tagged
    assert all(backbones.activation(f"{a}:{t}") == "quick_gelu" for a, t in tagged)
    assert backbones.activation("ViT-B-16:laion2b_s34b_b88k") == "gelu"
    assert backbones.activation("ViT-B-16:/ckpt/openai.pt") == "gelu"  # a local file uses the architecture named
    assert backbones.activation("ViT-B-16-quickgelu:/ckpt/openai.pt") == "quick_gelu"
    assert backbones.activation("tiny-shapes:builtin") == "gelu"  # the built-in model is not an OpenAI model


def test_list_backbones_shows_quickgelu_architectures(cli):
    out = cli("list", "backbones", "--all").output
    assert "ViT-B-16-quickgelu:/path/to/checkpoint" in out and "RN50-quickgelu:/path/to/checkpoint" in out
    assert "ViT-B-16:openai" in out and "QuickGELU" in out
