"""ueobench: benchmark unsupervised CLIP fine-tuning (UEO and baselines) under category shift."""
from __future__ import annotations

from .errors import UeobenchError
from .method import AdaptContext, Method, Options, register_method

__version__ = "0.1.0"
__all__ = ["UeobenchError", "Method", "Options", "AdaptContext", "register_method", "__version__"]


def __getattr__(name: str):
    # The API pulls in torch and open_clip; import it lazily so `import ueobench` in a plugin stays cheap.
    import importlib

    api = importlib.import_module("ueobench.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'ueobench' has no attribute {name!r}")
