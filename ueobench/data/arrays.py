"""Images stored as arrays in one file, as the official releases of CIFAR and SVHN ship them.

- ``:cifar``: a pickled batch of the python version of CIFAR-10 / CIFAR-100 (``cifar-10-batches-py/test_batch``,
  ``cifar-100-python/test``): ``data`` is N x 3072 uint8 (channel-major 32 x 32), labels are ``labels`` (CIFAR-10)
  or ``fine_labels`` (CIFAR-100). It is read with an unpickler that builds numpy arrays and nothing else, so a
  hostile file cannot run code (torchvision's reader calls ``pickle.load``).
- ``:svhn``: SVHN's ``test_32x32.mat`` (MATLAB v5): ``X`` is 32 x 32 x 3 x N, ``y`` N x 1 with 10 for the digit 0.

An image's reference is ``DATASET:FILE#ROW``; the domain's content fingerprint is the SHA-256 of the file, so every image's
content key is that hash and its row (``DomainData.content_id``).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.errors import DataError

FORMATS = ("cifar", "svhn")
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a CIFAR batch holds only arrays and lists")
        return super().find_class(module, name)


def _cifar(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"cannot read CIFAR batch {path} ({e}); it should be a file of the python version "
                        f"(cifar-10-batches-py/ or cifar-100-python/)") from None
    if not isinstance(raw, dict):
        raise DataError(f"cannot read CIFAR batch {path}: expected a pickled dict, got {type(raw).__name__}")
    raw = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    labels = raw.get("fine_labels", raw.get("labels"))
    data = raw.get("data")
    if labels is None or not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 \
            or len(labels) != len(data):
        raise DataError(f"cannot read CIFAR batch {path}: expected 'data' (N x 3072 uint8) and 'labels' or "
                        f"'fine_labels' of the same length")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.uint8), np.asarray(labels, dtype=np.int64)


def _svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except (OSError, ValueError, TypeError, NotImplementedError) as e:
        raise DataError(f"cannot read SVHN file {path} ({e}); it should be test_32x32.mat of the cropped-digits "
                        f"release") from None
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y is None \
            or np.asarray(y).size != x.shape[3]:
        raise DataError(f"cannot read SVHN file {path}: expected X (32 x 32 x 3 x N) and y (N labels)")
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)).astype(np.uint8), np.asarray(y).reshape(-1) % 10


READERS = {"cifar": _cifar, "svhn": _svhn}


def read_array_file(path: Path, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """(N x 32 x 32 x 3 uint8 images, N labels) of one file."""
    if not path.is_file():
        raise DataError(f"array file {path} not found")
    return READERS[fmt](path)


class ArrayImages:
    """Opens ``DATASET:FILE#ROW`` refs, and hands every other ref to ``fallback`` (a composition mixes array and
    file sources). The arrays are read once per process, on first use; the object pickles without them, so loader
    workers get the paths and read the files themselves."""

    def __init__(self, files: dict[str, tuple[str, str]], fallback: Any = None):
        self.files = files  # ref prefix -> (path, format)
        self.fallback = fallback
        self._arrays: dict[str, np.ndarray] = {}

    def preload(self, prefix: str, images: np.ndarray) -> None:
        self._arrays[prefix] = images

    def merged(self, other: "ArrayImages") -> "ArrayImages":
        out = ArrayImages({**self.files, **other.files}, self.fallback or other.fallback)
        out._arrays = {**self._arrays, **other._arrays}
        return out

    def __getstate__(self) -> dict:
        return {"files": self.files, "fallback": self.fallback, "_arrays": {}}

    def __call__(self, ref: str | int) -> Image.Image:
        prefix, _, row = str(ref).rpartition("#")
        if prefix not in self.files:
            if self.fallback is None:
                raise DataError(f"cannot read image {ref}: not a row of {', '.join(self.files)}")
            return self.fallback(ref)
        if prefix not in self._arrays:
            path, fmt = self.files[prefix]
            self._arrays[prefix] = read_array_file(Path(path), fmt)[0]
        return Image.fromarray(self._arrays[prefix][int(row)], "RGB")
