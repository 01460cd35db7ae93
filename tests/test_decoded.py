"""Each image decoded once per process (``ueobench.data.decoded``): keyed by content, and exact."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from conftest import TINY
from ueobench.data.decoded import DecodedImages
from ueobench.data.sources import open_image


def test_the_cache_is_keyed_by_content_and_hands_out_copies(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (4, 4), (10, 20, 30)).save(a)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(b)
    content = {str(a): "sha256:same", str(b): "sha256:same"}
    cache = DecodedImages(open_image, content, budget=10**6)
    first = cache(str(a))
    first.putpixel((0, 0), (255, 255, 255))  # a caller changing its copy changes nothing cached
    again = cache(str(b))  # the same bytes under another path: decoded once
    assert cache.stats()["decoded"] == 1 and cache.stats()["reused"] == 1
    assert again.getpixel((0, 0)) == (10, 20, 30)
    Image.new("RGB", (4, 4), (99, 0, 0)).save(a)  # the file changes: a new content key, a new decode
    content[str(a)] = "sha256:other"
    assert cache(str(a)).getpixel((0, 0)) == (99, 0, 0)
    small = DecodedImages(open_image, content, budget=10)  # over budget: decoded every time, never wrong
    assert small(str(b)).getpixel((1, 1)) == small(str(b)).getpixel((1, 1)) and small.stats()["bytes_held"] == 0


def test_a_run_is_bit_identical_with_and_without_the_cache(cli, tmp_path, monkeypatch):
    args = ("run", "--method", "ueo", "--protocol", "oda", "--domain", "real", "--backbone", TINY, "--no-cache",
            "--set", "epochs=2", "--set", "eval_every=1")
    runs = []
    for mb, where in (("0", "off"), ("1024", "on")):
        monkeypatch.setenv("UEOBENCH_DECODE_CACHE_MB", mb)
        assert cli(*args, "--results", str(tmp_path / where)).exit_code == 0
        [d] = (tmp_path / where / "runs").iterdir()
        runs.append(d)
    assert runs[0].name == runs[1].name  # the cache is execution, not identity
    pa, pb = (np.load(d / "predictions.npz") for d in runs)
    assert all(np.array_equal(pa[k], pb[k]) for k in pa.files)
    ra, rb = (json.loads((d / "record.json").read_text()) for d in runs)
    assert ra["history"] == rb["history"] and ra["metrics"] == rb["metrics"]
    assert (ra["settings"]["decode_cache_bytes"], rb["settings"]["decode_cache_bytes"]) == (0, 1024 * 2**20)


def test_to_tensor_and_normalize_once_per_batch_give_the_same_bits():
    import torch
    from torchvision import transforms as T

    from ueobench.data.loader import per_batch

    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((37, 41, 3)) * 255).astype(np.uint8)) for _ in range(6)]
    norm = T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    for transform in (T.Compose([T.RandomResizedCrop(32, scale=(0.5, 1.0)), T.RandomHorizontalFlip(),
                                 T.Lambda(lambda im: im.convert("RGB")), T.ToTensor(), norm]),
                      T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor(), norm])):
        image, collate = per_batch(transform)
        assert collate is not None
        torch.manual_seed(3)
        expected = torch.stack([transform(im) for im in images])
        torch.manual_seed(3)  # the same random draws, in the same order
        got = collate([(image(im), i) for i, im in enumerate(images)])[0]
        assert got.dtype == expected.dtype and torch.equal(got, expected)
    assert per_batch(T.Compose([T.ToTensor()]))[1] is None  # nothing to split: unchanged
