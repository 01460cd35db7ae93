"""The built-in ``shapes`` dataset: procedurally drawn shapes in four visual styles (domains).

Images are generated once, deterministically from a seed, and written to a cache folder as ordinary PNG files
with image lists, so the same loading path serves ``shapes`` and the real datasets.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .faults import failpoint

GENERATOR_VERSION = 2
IMAGE_SIZE = 64
PER_CLASS = {"train": 40, "test": 20}
_SS = 2  # supersampling factor for anti-aliased edges


from .paths import cache_root  # noqa: E402,F401 (re-exported)


# ---------------------------------------------------------------------------------------------- geometry


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    a = phase + np.arange(n) * 2 * math.pi / n
    return np.stack([np.cos(a), np.sin(a)], 1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    a = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _ellipse(rx: float, ry: float, n: int = 48) -> np.ndarray:
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([rx * np.cos(a), ry * np.sin(a)], 1)


def _heart(n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], 1) / 17.0


def _crescent(n: int = 48) -> np.ndarray:
    a = np.linspace(-math.pi / 2, math.pi / 2, n)
    outer = np.stack([np.cos(a), np.sin(a)], 1)
    inner = np.stack([0.45 * np.cos(a[::-1]) + 0.05, np.sin(a[::-1]) * 0.92], 1)
    return np.concatenate([outer, inner]) - [0.35, 0]


SHAPES: dict[str, np.ndarray | None] = {
    "circle": _ellipse(1, 1),
    "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 0.8,
    "triangle": _regular(3, -math.pi / 2),
    "star": _star(),
    "heart": _heart(),
    "cross": np.array(
        [[-0.3, -1], [0.3, -1], [0.3, -0.3], [1, -0.3], [1, 0.3], [0.3, 0.3], [0.3, 1], [-0.3, 1], [-0.3, 0.3],
         [-1, 0.3], [-1, -0.3], [-0.3, -0.3]]
    ),
    "hexagon": _regular(6),
    "arrow": np.array([[-1, -0.25], [0.2, -0.25], [0.2, -0.65], [1, 0], [0.2, 0.65], [0.2, 0.25], [-1, 0.25]]),
    "crescent": _crescent(),
    "diamond": np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]]),
    "pentagon": _regular(5, -math.pi / 2),
    "ring": None,  # drawn as an annulus
    "octagon": _regular(8, math.pi / 8),
    "trapezoid": np.array([[-0.5, -0.6], [0.5, -0.6], [1, 0.6], [-1, 0.6]]),
    "lightning": np.array([[0.1, -1], [-0.55, 0.1], [-0.05, 0.1], [-0.3, 1], [0.6, -0.2], [0.1, -0.2], [0.45, -1]]),
    "ellipse": _ellipse(1, 0.55),
}


# ------------------------------------------------------------------------------------------------ styles


COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40), "green": (50, 160, 60), "blue": (40, 70, 200), "yellow": (230, 210, 40),
    "orange": (240, 140, 30), "purple": (130, 50, 170), "pink": (240, 130, 180), "brown": (130, 80, 40),
    "black": (25, 25, 25), "gray": (128, 128, 128), "white": (245, 245, 245), "cyan": (40, 200, 210),
}


def pick_colour(rng: np.random.Generator) -> str:
    return list(COLOURS)[int(rng.integers(len(COLOURS)))]


def _colour(rng: np.random.Generator, lo: int = 30, hi: int = 230) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))  # type: ignore[return-value]


def _background(style: str, rng: np.random.Generator, size: int) -> np.ndarray:
    if style == "sketch":
        base = np.full((size, size, 3), 235 + rng.integers(0, 20), np.float32)
        return base + rng.normal(0, 3, (size, size, 1))
    if style == "clipart":
        return np.broadcast_to(np.array(_colour(rng, 180, 256), np.float32), (size, size, 3)).copy()
    c0, c1 = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    grad = c0 * (1 - t) + c1 * t
    img = np.broadcast_to(grad, (size, size, 3)).copy()
    if style == "painting":
        for _ in range(12):  # broad brush strokes
            y, x = rng.integers(0, size, 2)
            h = rng.integers(size // 12, size // 4)
            img[max(0, y - h):y + h, max(0, x - 3 * h):x + 3 * h] = np.array(_colour(rng), np.float32)
    else:
        img += rng.normal(0, 12, (size, size, 3))
    return img


def _transform(poly: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, float, np.ndarray]:
    angle = rng.uniform(-0.5, 0.5)
    scale = size * rng.uniform(0.28, 0.42)
    centre = size / 2 + rng.uniform(-0.1, 0.1, 2) * size
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return poly @ rot.T * scale + centre, scale, centre


def render(shape: str, style: str, rng: np.random.Generator, size: int = IMAGE_SIZE, colour: str | None = None) -> Image.Image:
    """Draw one image of ``shape`` in ``style`` (real, clipart, painting or sketch), filled with a named colour."""
    colour = colour or pick_colour(rng)
    big = size * _SS
    bg = _background(style, rng, big)
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    fill = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOURS[colour])
    base = SHAPES[shape]
    poly = _ellipse(1, 1) if base is None else base
    pts, scale, centre = _transform(poly, rng, big)
    line = {"clipart": 3, "sketch": 2, "painting": 0, "real": 0}[style] * _SS
    outline = tuple(int(v) for v in rng.integers(0, 60, 3))
    xy = [tuple(p) for p in pts]
    if style == "real":  # soft drop shadow, then the lit shape
        shadow = [(x + 0.06 * big, y + 0.06 * big) for x, y in xy]
        draw.polygon(shadow, fill=(40, 40, 40))
    if style == "sketch":
        for _ in range(2):  # two jittered strokes, no fill
            jit = pts + rng.normal(0, 0.8 * _SS, pts.shape)
            draw.line([tuple(p) for p in jit] + [tuple(jit[0])], fill=outline, width=line, joint="curve")
    else:
        draw.polygon(xy, fill=fill, outline=outline if line else None, width=line or 1)
    if base is None:  # ring: punch the hole
        hole = _ellipse(0.55, 0.55) * scale + centre
        hole_xy = [tuple(p) for p in hole]
        if style == "sketch":
            draw.line(hole_xy + [hole_xy[0]], fill=outline, width=line)
        else:
            inner = tuple(int(v) for v in bg[int(centre[1]), int(centre[0])].clip(0, 255))
            draw.polygon(hole_xy, fill=inner, outline=outline if line else None, width=line or 1)
    img = canvas.resize((size, size), Image.LANCZOS)
    if style == "painting":
        img = img.filter(ImageFilter.GaussianBlur(1.0))
        arr = np.asarray(img, np.float32) + rng.normal(0, 10, (size, size, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    elif style == "real":
        arr = np.asarray(img, np.float32)
        light = np.linspace(1.15, 0.85, size, dtype=np.float32)[None, :, None]
        img = Image.fromarray(np.clip(arr * light + rng.normal(0, 4, arr.shape), 0, 255).astype(np.uint8))
    return img


# ---------------------------------------------------------------------------------------------- writing


def dataset_dir(seed: int = 0) -> Path:
    return cache_root() / "shapes" / f"v{GENERATOR_VERSION}-seed{seed}"


def generate(
    classes: list[str],
    domains: list[tuple[str, str, str, str]],
    seed: int = 0,
    per_class: dict[str, int] | None = None,
    out: Path | None = None,
    progress=None,
) -> Path:
    """Write the dataset once (atomically) and return its folder; later calls reuse it.

    ``domains`` holds (name, folder, adapt list, test list) as in the protocol file; the domain name is the
    drawing style.
    """
    out = out or dataset_dir(seed)
    if (out / "COMPLETE").exists():
        return out
    per_class = per_class or PER_CLASS
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        total = len(domains) * len(classes) * sum(per_class.values())
        task = progress.add_task("generating shapes", total=total) if progress else None
        for di, (style, folder, adapt_list, test_list) in enumerate(domains):
            lists = {"train": adapt_list, "test": test_list}
            for si, (split, n) in enumerate(per_class.items()):
                lines = []
                for ci, name in enumerate(classes):
                    d = tmp / folder / name
                    d.mkdir(parents=True, exist_ok=True)
                    for i in range(n):
                        rng = np.random.default_rng([seed, di, ci, si, i])
                        rel = f"{folder}/{name}/{split}_{i:04d}.png"
                        render(name, style, rng).save(tmp / rel, optimize=False)
                        lines.append(f"{rel} {ci}\n")
                    if task is not None:
                        progress.advance(task, n)
                (tmp / lists[split]).write_text("".join(lines))
                failpoint("data-generation")
        (tmp / "COMPLETE").write_text(f"shapes generator v{GENERATOR_VERSION}, seed {seed}\n")
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished first; its copy is identical
            if not (out / "COMPLETE").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
