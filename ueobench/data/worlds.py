"""The built-in worlds: procedurally drawn shapes in four visual styles (domains).

* ``shapes``: 16 classes (the shape; its colour is a nuisance), 64 px, 60 images per class and domain. Small
  and fast: the README demo and the unit tests.
* ``shapes65``: 65 classes (colour x shape: "red star"), 32 px, 56 images per class and domain, the domain
  sizes and class structure of Office-Home: the built-in leaderboard at the methods' reference recipes.

Images are generated once, deterministically from a seed, and written to a cache folder as ordinary PNG files
with image lists, so the same loading path serves the built-in worlds and the real datasets.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..core.faults import failpoint

GENERATOR_VERSION = 2
IMAGE_SIZE = 64
PER_CLASS = {"train": 40, "test": 20}
_SS = 2  # supersampling factor for anti-aliased edges


from ..core.paths import cache_root  # noqa: E402

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


# ------------------------------------------------------------------------------------ shapes65 (colour x shape)


#: class colours of ``shapes65``: a class is "<colour> <shape>"; orange sits between red and the others on purpose
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 45, 40), "orange": (240, 140, 30), "green": (50, 160, 60), "blue": (40, 80, 205),
    "purple": (135, 55, 175),
}
SHAPES65 = ("circle", "square", "triangle", "star", "heart", "cross", "hexagon", "arrow", "crescent", "diamond",
            "pentagon", "ring", "ellipse")
STYLES65 = ("product", "real", "painting", "sketch")


def parse_class(name: str) -> tuple[str, str]:
    """``"red star"`` -> (``"red"``, ``"star"``)."""
    colour, _, shape = name.partition(" ")
    if colour not in CLASS_COLOURS or shape not in SHAPES:
        raise ValueError(f"'{name}' is not '<colour> <shape>' with a colour of {list(CLASS_COLOURS)}")
    return colour, shape


def _shape_points(shape: str, rng: np.random.Generator, big: int, scale: tuple[float, float]):
    base = SHAPES[shape]
    poly = _ellipse(1, 1) if base is None else base
    angle = rng.uniform(-0.6, 0.6)
    s = big * rng.uniform(*scale)
    centre = big / 2 + rng.uniform(-0.12, 0.12, 2) * big
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return poly @ rot.T * s + centre, s, centre, base is None


def _draw_shape(draw: ImageDraw.ImageDraw, pts, s, centre, ring: bool, fill, hole_fill, outline=None, width=0,
                stroke_only: bool = False, rng: np.random.Generator | None = None) -> None:
    if stroke_only:
        for _ in range(2):  # two jittered strokes, no fill
            jit = pts + rng.normal(0, 0.03 * s, pts.shape)
            draw.line([tuple(p) for p in jit] + [tuple(jit[0])], fill=fill, width=width, joint="curve")
        if ring:
            hole = _ellipse(0.55, 0.55) * s + centre
            draw.line([tuple(p) for p in hole] + [tuple(hole[0])], fill=fill, width=width)
        return
    draw.polygon([tuple(p) for p in pts], fill=fill, outline=outline, width=width or 1)
    if ring:
        hole = _ellipse(0.55, 0.55) * s + centre
        draw.polygon([tuple(p) for p in hole], fill=hole_fill, outline=outline, width=width or 1)


def render_class(colour: str, shape: str, style: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One ``shapes65`` image: a ``colour`` ``shape`` in ``style``.

    The styles differ in how much they hide the two things a class is made of. ``product``: a lone object on a
    plain light background. ``real``: a textured background, a random white balance (it moves hues), a small
    distractor shape, uneven light. ``painting``: brush strokes behind, a strong colour cast, blur. ``sketch``: two
    thin coloured strokes and no fill. Objects vary in size down to a few pixels, where polygons blur together.
    """
    ss = 4
    big = size * ss
    base = np.array(CLASS_COLOURS.get(colour) or COLOURS[colour], np.float32) + rng.integers(-22, 23, 3)
    if style == "product":
        bg = np.full((big, big, 3), float(rng.integers(232, 256)), np.float32)
    elif style == "sketch":
        bg = np.full((big, big, 3), float(rng.integers(225, 250)), np.float32) + rng.normal(0, 4, (big, big, 1))
    else:
        bg = _background("painting" if style == "painting" else "real", rng, big)
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    if style == "real":  # a small distractor of another shape, in a grey or a random colour
        other = list(SHAPES)[int(rng.integers(len(SHAPES)))]
        dp, ds, dc, dring = _shape_points(other, rng, big, (0.10, 0.16))
        corner = rng.choice([-1, 1], 2) * big * 0.3
        dp, dc = dp + corner, dc + corner
        dcol = tuple(int(v) for v in rng.integers(60, 200, 3))
        _draw_shape(draw, dp, ds, dc, dring, dcol, dcol)
    pts, s, centre, ring = _shape_points(shape, rng, big, (0.22, 0.42))
    fill = tuple(int(v) for v in np.clip(base, 0, 255))
    inner = tuple(int(v) for v in bg[int(np.clip(centre[1], 0, big - 1)), int(np.clip(centre[0], 0, big - 1))].clip(0, 255))
    if style in ("product", "real"):
        shadow = pts + 0.05 * big
        shade = (200, 200, 200) if style == "product" else (40, 40, 40)
        draw.polygon([tuple(p) for p in shadow], fill=shade)
    if style == "sketch":
        dark = tuple(int(v * 0.85) for v in fill)
        _draw_shape(draw, pts, s, centre, ring, dark, None, width=int(1.5 * ss), stroke_only=True, rng=rng)
    else:
        _draw_shape(draw, pts, s, centre, ring, fill, inner)
    img = np.asarray(canvas.resize((size, size), Image.LANCZOS), np.float32)
    if style == "real":
        img = img * rng.uniform(0.82, 1.18, 3) * np.linspace(1.15, 0.85, size, dtype=np.float32)[None, :, None]
        img += rng.normal(0, 6, img.shape)
    elif style == "painting":
        cast = rng.integers(0, 256, 3).astype(np.float32)
        img = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7)),
                         np.float32)
        img = 0.7 * img + 0.3 * cast + rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _render_class(name: str, style: str, rng: np.random.Generator) -> Image.Image:
    colour, shape = parse_class(name)
    return render_class(colour, shape, style, rng)


# ---------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class World:
    """How a built-in world draws its images; the protocol file (``"builtin": name``) holds classes and domains."""

    name: str
    version: int
    per_class: dict[str, int] = field(default_factory=dict)
    #: class names are "<colour> <shape>" and the colour is part of the class (else a random nuisance colour)
    colour_classes: bool = False


WORLDS: dict[str, World] = {
    "shapes": World("shapes", GENERATOR_VERSION, PER_CLASS),
    "shapes65": World("shapes65", 1, {"train": 36, "test": 20}, colour_classes=True),
}


def get_world(name: str) -> World:
    if name not in WORLDS:
        from .errors import UeobenchError

        raise UeobenchError(f"unknown built-in world '{name}'; the protocol's 'builtin' must be one of {', '.join(WORLDS)}")
    return WORLDS[name]


def dataset_dir(seed: int = 0, world: str = "shapes") -> Path:
    w = get_world(world)
    return cache_root() / w.name / f"v{w.version}-seed{seed}"


def _folder_name(name: str) -> str:
    return name.replace(" ", "_")  # "red star" -> red_star, as Office-Home's Alarm_Clock


def _render_class_files(job: tuple) -> list[str]:
    """Draw and save the images of one class in one split of one domain; returns their relative paths."""
    root, world, seed, di, style, folder, si, split, n, ci, name = job
    draw = _render_class if WORLDS[world].colour_classes else render
    d = Path(root) / folder / _folder_name(name)
    d.mkdir(parents=True, exist_ok=True)
    rels = []
    for i in range(n):
        rng = np.random.default_rng([seed, di, ci, si, i])
        rel = f"{folder}/{_folder_name(name)}/{split}_{i:04d}.png"
        draw(name, style, rng).save(Path(root) / rel, optimize=False)
        rels.append(rel)
    return rels


def generate(
    classes: list[str],
    domains: list[tuple[str, str, str, str]],
    seed: int = 0,
    per_class: dict[str, int] | None = None,
    out: Path | None = None,
    progress=None,
    world: str = "shapes",
) -> Path:
    """Write the dataset once (atomically) and return its folder; later calls reuse it.

    ``domains`` holds (name, folder, adapt list, test list) as in the protocol file; the domain name is the
    drawing style.
    """
    w = get_world(world)
    out = out or dataset_dir(seed, world)
    if (out / "COMPLETE").exists():
        return out
    per_class = per_class or w.per_class
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        total = len(domains) * len(classes) * sum(per_class.values())
        task = progress.add_task(f"generating {w.name}", total=total) if progress else None
        jobs = [(str(tmp), w.name, seed, di, style, folder, si, split, n, ci, name)
                for di, (style, folder, _, _) in enumerate(domains)
                for si, (split, n) in enumerate(per_class.items()) for ci, name in enumerate(classes)]
        workers = min(len(domains), os.cpu_count() or 1, 4)
        pool = Pool(workers) if total >= 2000 and workers > 1 else None  # every image has its own seed: same files
        try:
            done = pool.imap(_render_class_files, jobs) if pool else map(_render_class_files, jobs)
            lines: list[str] = []
            for job, rels in zip(jobs, done):
                lines += [f"{rel} {job[9]}\n" for rel in rels]
                if task is not None:
                    progress.advance(task, len(rels))
                if job[9] == len(classes) - 1:  # the last class of one domain's split: its list is complete
                    lists = {"train": domains[job[3]][2], "test": domains[job[3]][3]}
                    (tmp / lists[job[7]]).write_text("".join(lines))
                    lines = []
                    failpoint("data-generation")
        finally:
            if pool is not None:
                pool.terminate()
        (tmp / "COMPLETE").write_text(f"{w.name} generator v{w.version}, seed {seed}\n")
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished first; its copy is identical
            if not (out / "COMPLETE").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
