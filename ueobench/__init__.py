"""ueobench: benchmark unsupervised CLIP fine-tuning (UEO and baselines) under category shift."""
from __future__ import annotations

from .errors import UeobenchError
from .method import AdaptContext, Method, Options, register_method

__version__ = "0.2.0"
__all__ = ["UeobenchError", "Method", "Options", "AdaptContext", "register_method", "__version__"]

_API = {"run", "table", "show_protocol", "check_data", "describe_methods", "list_methods", "list_backbones",
        "list_datasets", "load_protocol", "add_plugin_folder", "get_method"}


def __getattr__(name: str):
    # The API pulls in torch and open_clip; import it lazily so `import ueobench` in a plugin stays cheap.
    if name not in _API:
        raise AttributeError(f"module 'ueobench' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module("ueobench.api"), name)
