"""Frozen image features, computed once per (visual weights, images, transform, device) and shared on disk.

Zero-shot prediction, UEO's confidence weights, UPL's pseudo-labels, the epoch-0 evaluation of training
methods and the evaluation of prompt-only methods all need the same thing: the eval-transform embeddings of a
domain's images under an image tower that has not changed. They are cached per *domain list* (not per shift),
so the five shifts of one domain share one pass over its images.

The key is content-based: a SHA-256 of the visual tower's weights, of the images' bytes (in order; never their
paths, sizes or times), the transform, the batch size and the device type. An entry whose stored key differs is
never reused. A lock makes concurrent processes wait for the one computing an entry instead of repeating it.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from filelock import FileLock

from ..core.errors import UeobenchError
from ..core.content import content_hashes
from ..core.hashing import canonical_json
from ..core.paths import cache_root
from ..data.loader import ImageDataset, per_batch
from ..models.clip_ops import encode_images, encode_images_raw, encode_local

FEATURE_VERSION = 2


def feature_cache_dir() -> Path:
    """``$UEOBENCH_FEATURE_CACHE``, else ``features/`` in the ueobench cache folder."""
    return Path(os.environ.get("UEOBENCH_FEATURE_CACHE") or cache_root() / "features")


def visual_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the image tower's parameters and buffers (content, not name)."""
    h = hashlib.sha256()
    for name, t in sorted(model.visual.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _content_digest(refs: Sequence[str | int], content: dict[str | int, str]) -> str:
    """SHA-256 over the images' contents, in order (never their paths, sizes or times)."""
    h = hashlib.sha256()
    hashes = None
    for r in refs:
        key = content.get(r)
        if key is None:  # an image the data fingerprint did not cover
            if hashes is None:
                hashes = content_hashes()
            key = content[r] = "sha256:" + hashes.sha256(r) if isinstance(r, str) else f"ref:{r}"
        h.update(f"{key}\n".encode())
    return h.hexdigest()


class FeatureStore:
    """Image features of one domain's lists for one backbone and transform; ``stats`` counts the work."""

    def __init__(self, backbone: Any, opener: Callable, transform: Any, batch_size: int, device: torch.device,
                 content: dict[str | int, str], cache_dir: Path | None, progress: Any = None):
        """``content``: each image's content key (``DomainData.content``, filled when the data was fingerprinted)."""
        self.backbone, self.opener, self.transform = backbone, opener, transform
        self.batch_size, self.device, self.content = batch_size, device, content
        self.cache_dir, self.progress = cache_dir, progress
        self._digest: str | None = None
        self._memory: dict[str, np.ndarray] = {}
        self.stats = {"images_encoded": 0, "images_reused": 0}

    def _key(self, refs: Sequence[str | int], kind: str = "global") -> dict[str, Any]:
        if self._digest is None:
            self._digest = visual_digest(self.backbone.model)
        key = {"version": FEATURE_VERSION, "visual": self._digest, "images": _content_digest(refs, self.content),
               "n": len(refs), "transform": repr(self.transform), "batch_size": self.batch_size,
               "device": self.device.type}
        if kind != "global":
            key["kind"] = kind
        return key

    def features(self, refs: Sequence[str | int], kind: str = "global") -> np.ndarray:
        """L2-normalised embeddings from memory, disk, or one pass over the images: ``global`` [len(refs), D]
        float32, ``raw`` the same before normalisation (linear probes), or ``local`` [len(refs), patches, D]
        float16 (GL-MCM's patch features)."""
        if kind not in ("global", "local", "raw"):
            raise ValueError(f"unknown feature kind {kind!r}")
        key = self._key(refs, kind)
        kid = hashlib.sha256(canonical_json(key).encode()).hexdigest()[:24]
        if kid in self._memory:
            self.stats["images_reused"] += len(refs)
            return self._memory[kid]
        feats = None
        if self.cache_dir is not None:
            if self.cache_dir.exists() and not self.cache_dir.is_dir():
                raise UeobenchError(f"feature cache {self.cache_dir} is a file, not a folder; set "
                                    f"UEOBENCH_FEATURE_CACHE or UEOBENCH_CACHE to a folder, or pass --no-cache")
            path = self.cache_dir / f"{kid}.npz"
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                with FileLock(str(path) + ".lock"):
                    feats = self._load(path, key)
                    if feats is None:
                        feats = self._compute(refs, kind)
                        self._store(path, key, feats)
                    else:
                        self.stats["images_reused"] += len(refs)
            except OSError as e:  # read-only or full: the cache only saves time, so the run goes on without it
                warnings.warn(f"feature cache {self.cache_dir} cannot be used ({e.strerror or e}); computing the "
                              f"features without it", stacklevel=2)
                self.cache_dir = None
                self.stats["cache_unusable"] = str(e.strerror or e)
        if feats is None:
            feats = self._compute(refs, kind)
        self._memory[kid] = feats
        return feats

    def _load(self, path: Path, key: dict[str, Any]) -> np.ndarray | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if json.loads(str(z["key"])) != key:
                    return None  # a hash-prefix collision or an older format: never reuse
                return z["features"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # unreadable or truncated entry: recompute and overwrite

    def _store(self, path: Path, key: dict[str, Any], feats: np.ndarray) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, features=feats, key=np.array(canonical_json(key)))
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written entry behind
            raise

    @torch.no_grad()
    def _compute(self, refs: Sequence[str | int], kind: str = "global") -> np.ndarray:
        items = [(r, -1) for r in refs]
        # its own generator: iterating a loader draws from the global RNG otherwise, and a cache hit (no loader)
        # must leave the random stream of the rest of the run exactly as a miss does
        image, collate = per_batch(self.transform)  # ToTensor + Normalize once per batch (bit-identical)
        loader = torch.utils.data.DataLoader(ImageDataset(items, self.opener, image), batch_size=self.batch_size,
                                             generator=torch.Generator(), collate_fn=collate)
        what = {"global": "encoding images", "raw": "encoding images (raw)"}.get(kind, "encoding local features")
        task = self.progress.add_task(what, total=len(items)) if self.progress is not None else None
        out = []
        for images, _, _ in loader:
            if kind == "global":
                out.append(encode_images(self.backbone, images.to(self.device)).cpu())
            elif kind == "raw":
                out.append(encode_images_raw(self.backbone, images.to(self.device)).cpu())
            else:  # half precision on disk: a ViT-B/16 domain of 4,000 images is 196 patches x 512 each
                out.append(encode_local(self.backbone, images.to(self.device)).half().cpu())
            if task is not None:
                self.progress.advance(task, len(images))
        if task is not None:
            self.progress.remove_task(task)
        self.stats["images_encoded"] += len(items)
        feats = torch.cat(out).numpy()
        return feats.astype(np.float32) if kind in ("global", "raw") else feats
