"""What ``list backbones`` prints, without importing torch: the cached list of every backbone open_clip can build
(keyed by the open_clip version, the shipped weights and ueobench's tiny architectures)."""
from __future__ import annotations

from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..core.cache import cached
from .configs import builtin_architectures


def backbones() -> list[dict[str, str]]:
    """Every backbone ueobench can build (``backbones.list_backbones``), from the cache when nothing changed."""
    try:
        oc = version("open_clip_torch")
    except PackageNotFoundError:
        oc = "none"
    folder = Path(str(resources.files("ueobench.weights")))
    key = f"open_clip {oc}; weights {sorted(p.name for p in folder.glob('*.safetensors'))}; " \
          f"archs {builtin_architectures()}"

    def compute():
        from .backbones import list_backbones

        return list_backbones()

    return cached("backbones", key, compute)
