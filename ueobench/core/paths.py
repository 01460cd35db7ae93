"""Where ueobench keeps its cache: ``$UEOBENCH_CACHE``, else ``$XDG_CACHE_HOME/ueobench``, else
``~/.cache/ueobench`` (generated datasets, image features, the method catalogue)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("UEOBENCH_CACHE"):
        return Path(os.environ["UEOBENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ueobench"
