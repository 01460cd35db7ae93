"""ueobench's own tiny architectures: open_clip model configs shipped in ``ueobench.model_configs`` (torch-free)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def builtin_architectures() -> list[str]:
    return sorted(Path(f.name).stem for f in resources.files("ueobench.model_configs").iterdir()
                  if f.name.endswith(".json"))
