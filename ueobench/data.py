"""Image sources (image lists, folder trees, Hugging Face datasets) and the benchmark's label remapping.

Every source yields the same thing: a list of ``Entry`` (where the image is, its class index in the protocol
file). ``load_domain`` then filters the adaptation split to the shift's target classes and remaps labels as
the reference code does: known classes 0..K-1, every other class >= K.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from . import settings, shapes
from .errors import DataError, UeobenchError
from .protocols import Domain, Protocol, Split

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("adapt", "test")


@dataclass(frozen=True)
class Entry:
    """One image: ``ref`` is a file path, or a row index into a Hugging Face dataset."""

    ref: str | int
    label: int  # class index in the protocol file


@dataclass
class DomainData:
    """The raw entries of one domain, before any shift is applied."""

    dataset: str
    domain: str
    source: str  # "list", "folder", "hf" or "builtin"
    location: str
    adapt: list[Entry]
    test: list[Entry]
    opener: Callable[[str | int], Image.Image]
    skipped: dict[str, int]
    content_id: str | None = None  # a content fingerprint the source provides itself (Hugging Face datasets)


@dataclass
class ShiftData:
    """Entries of one (dataset, shift, domain) with benchmark labels (known 0..K-1, others >= K)."""

    protocol: Protocol
    split: Split
    domain: DomainData
    adapt: list[tuple[str | int, int]]
    test: list[tuple[str | int, int]]
    adapt_index: list[int]  # positions of ``adapt`` in ``domain.adapt`` (``test`` is all of ``domain.test``)

    @property
    def known_names(self) -> list[str]:
        return [self.protocol.classes[i] for i in self.split.known]


def normalise_name(name: str) -> str:
    """Match folder names to class names ignoring case, spaces, '_' and '-' (``Alarm_Clock`` == ``alarm clock``)."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB with the full range kept: 16-bit and 32-bit integer images are scaled to 8 bits (PIL's own convert
    clips them, so a 16-bit PNG loads all white) and float images in [0, 1] are scaled by 255 (else all black)."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            arr = arr * 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else arr
        elif np.nanmax(arr, initial=0.0) > 255:
            arr = arr / 257.0  # 16-bit to 8-bit
        arr = np.nan_to_num(np.clip(arr, 0, 255)).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return im.convert("RGB")


def open_image(path: str | int) -> Image.Image:
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or stream forever
            raise DataError(f"cannot read image {path}: not a regular file; list only image files")
        with Image.open(path) as im:
            return to_rgb(im)
    except DataError:
        raise
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(
            f"cannot read image {path} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); re-download or "
            f"remove it (ueobench data check lists every unreadable file)"
        ) from None


# ------------------------------------------------------------------------------------------------ sources


class _Resolver:
    """Resolves list paths under a root like ``Path.resolve`` (``..`` and symlinks), but cheaply: directories are
    resolved once and cached, files cost one ``lstat`` (DomainNet lists hold 100,000+ lines)."""

    def __init__(self, root: Path):
        self.root = os.path.realpath(root)
        self._dirs: dict[str, str] = {}

    def __call__(self, rel: str) -> str | None:
        """The real path of ``rel``, or None when it escapes the root (absolute, ``..``, a symlink out of it)."""
        if os.path.isabs(rel):
            return None
        folder, name = os.path.split(os.path.join(self.root, rel))
        real_dir = self._dirs.get(folder)
        if real_dir is None:
            real_dir = self._dirs[folder] = os.path.realpath(folder)
        full = os.path.join(real_dir, name)
        if os.path.islink(full):
            full = os.path.realpath(full)
        return full if full.startswith(self.root + os.sep) else None


def read_image_list(path: Path, root: Path, num_classes: int) -> tuple[list[Entry], int]:
    """Parse ``relative/path label`` lines. Returns the entries and the number of duplicate lines skipped."""
    entries: list[Entry] = []
    seen: set[str] = set()
    dupes = 0
    inside = _Resolver(root)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read image list {path} ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "\x00" in line:
            raise DataError(f"{path}:{n}: the line holds a NUL byte; list lines are 'relative/path label'")
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
            raise DataError(f"{path}:{n}: expected 'relative/path label', got {line.strip()!r}")
        rel, label = parts[0].strip(), int(parts[1])
        if not 0 <= label < num_classes:
            raise DataError(f"{path}:{n}: label {label} is outside the protocol's {num_classes} classes (0..{num_classes - 1})")
        full = inside(rel)
        if full is None:
            raise DataError(f"{path}:{n}: path {rel!r} escapes the dataset root {root}; list paths must be relative to it")
        if rel in seen:
            dupes += 1
            continue
        seen.add(rel)
        entries.append(Entry(full, label))
    return entries, dupes


def read_folder_tree(folder: Path, classes: Sequence[str]) -> list[Entry]:
    """``<folder>/<class folder>/<image>``; class folders are matched to protocol names by ``normalise_name``."""
    index = {normalise_name(c): i for i, c in enumerate(classes)}
    entries: list[Entry] = []
    root = os.path.realpath(folder)

    def inside(p: Path) -> bool:
        return os.path.realpath(p).startswith(root + os.sep)

    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not inside(sub):
            raise DataError(f"{sub}: class folder is a link out of {folder}; folder trees may not leave their root")
        key = normalise_name(sub.name)
        if key not in index:
            raise DataError(
                f"{sub}: folder matches no class of the protocol; rename it to a class name or remove it "
                f"(ueobench show protocol lists the classes)"
            )
        for f in sorted(sub.rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                if not inside(f):
                    raise DataError(f"{f}: image is a link out of {folder}; folder trees may not leave their root")
                entries.append(Entry(str(f), index[key]))
    return entries


def _hf_label_mapper(ds: Any, column: str, classes: Sequence[str], where: str) -> Callable[[Any], int]:
    feature = ds.features.get(column)
    if feature is None:
        raise DataError(f"{where}: no label column '{column}' (columns: {', '.join(ds.column_names)}); set label_column")
    names = getattr(feature, "names", None)
    if names:
        index = {normalise_name(c): i for i, c in enumerate(classes)}
        missing = [n for n in names if normalise_name(n) not in index]
        if missing:
            raise DataError(f"{where}: class label(s) {missing[:5]} match no protocol class")
        table = [index[normalise_name(n)] for n in names]
        return lambda v: table[int(v)]
    return int


def read_hf(cfg: settings.DatasetSettings, location: str, domain: Domain, classes: Sequence[str]) -> dict[str, Any]:
    """Load a Hugging Face dataset: ``load_from_disk`` for a saved one, ``imagefolder`` for a folder, else a hub id."""
    import datasets

    where = f"Hugging Face dataset {location}"
    p = Path(location)
    try:
        if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
            obj = datasets.load_from_disk(str(p))
        elif p.is_dir():
            obj = datasets.load_dataset("imagefolder", data_dir=str(p))
        else:
            obj = datasets.load_dataset(location, cfg.hf_name)
    except Exception as e:  # noqa: BLE001 - the datasets library raises many types
        raise DataError(f"{where}: cannot load ({type(e).__name__}: {e})") from None
    splits = {"adapt": cfg.adapt_split, "test": cfg.test_split}
    out: dict[str, Any] = {}
    for role, name in splits.items():
        if isinstance(obj, datasets.DatasetDict):
            if name is None:
                name = "test" if "test" in obj else cfg.adapt_split
            if name not in obj:
                raise DataError(f"{where}: no split '{name}' (splits: {', '.join(obj)})")
            ds = obj[name]
        else:
            ds = obj
        if cfg.image_column not in ds.column_names:
            raise DataError(f"{where}: no image column '{cfg.image_column}' (columns: {', '.join(ds.column_names)})")
        if cfg.domain_column:
            col = ds[cfg.domain_column]
            names = getattr(ds.features[cfg.domain_column], "names", None)
            keep = [i for i, v in enumerate(col) if str(names[v] if names else v).lower() == domain.name.lower()]
            ds = ds.select(keep)
        out[role] = ds
    return out


class _HFOpener:
    """Opens ``"<split role>:<row>"`` refs; a plain callable object so loader workers can pickle it."""

    def __init__(self, splits: dict[str, Any], column: str):
        self.splits, self.column = splits, column

    def __call__(self, ref: str | int) -> Image.Image:
        role, row = str(ref).split(":")
        try:
            return self.splits[role][int(row)][self.column].convert("RGB")
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            raise DataError(f"cannot read image {ref} of the Hugging Face dataset ({e})") from None


def _hf_domain(protocol: Protocol, dom: Domain, cfg: settings.DatasetSettings, location: str, skipped: dict) -> "DomainData":
    splits = read_hf(cfg, location, dom, protocol.classes)
    entries: dict[str, list[Entry]] = {}
    for role, ds in splits.items():
        to_label = _hf_label_mapper(ds, cfg.label_column, protocol.classes, f"Hugging Face dataset {location}")
        entries[role] = [Entry(f"{role}:{i}", to_label(v)) for i, v in enumerate(ds[cfg.label_column])]
    opener = _HFOpener(splits, cfg.image_column)
    content = ",".join(f"{role}={getattr(ds, '_fingerprint', None)}" for role, ds in sorted(splits.items()))
    return DomainData(protocol.name, dom.name, "hf", location, entries["adapt"], entries["test"], opener, skipped,
                      content)


# ------------------------------------------------------------------------------------------- resolution


def _missing(protocol: Protocol, message: str) -> DataError:
    where = f"; the dataset is published at {protocol.homepage}" if protocol.homepage else ""
    return DataError(f"{message}{where}")


def dataset_root(protocol: Protocol, data_root: str | None = None, progress: Any = None) -> Path:
    """The folder of one dataset; a built-in world (``shapes``, ``shapes65``) is generated into the cache on first use."""
    if protocol.builtin:
        doms = [(d.name, d.folder, d.adapt, d.test) for d in protocol.domains]
        try:
            return shapes.generate(list(protocol.classes), doms, progress=progress, world=protocol.builtin)
        except OSError as e:
            from .paths import cache_root

            raise UeobenchError(f"cannot write the built-in dataset under {cache_root()} ({e.strerror}); set "
                                f"UEOBENCH_CACHE to a writable folder") from None
    cfg = settings.dataset_settings(protocol.name)
    if cfg.root:
        return Path(cfg.root).expanduser()
    root, _ = settings.data_root(data_root)
    if root is None:
        raise _missing(
            protocol,
            f"no data root for dataset '{protocol.name}': pass --data-root DIR, set ${settings.ENV_DATA}, "
            f"or put data_root in {settings.CONFIG_FILE}",
        )
    return root / protocol.folder


def is_available(protocol: Protocol, data_root: str | None = None) -> bool:
    """True when data for this dataset can be found without generating or downloading anything."""
    if protocol.builtin:
        return True
    try:
        cfg = settings.dataset_settings(protocol.name)
        if cfg.source == "hf" and cfg.hf_path:
            return True
        return dataset_root(protocol, data_root).is_dir()
    except UeobenchError:
        return False


def load_domain(protocol: Protocol, domain: str, data_root: str | None = None, progress: Any = None) -> DomainData:
    """Find and read the images of one domain from the first source that exists."""
    dom = protocol.domain(domain)
    cfg = settings.dataset_settings(protocol.name)
    skipped = {"duplicate list entries": 0}
    if cfg.source == "hf" and cfg.hf_path:
        return _hf_domain(protocol, dom, cfg, cfg.hf_path, skipped)
    root = dataset_root(protocol, data_root, progress)
    n = protocol.num_classes
    if cfg.source == "hf":
        return _hf_domain(protocol, dom, cfg, str(root / dom.folder), skipped)
    if not root.is_dir():
        raise _missing(protocol, f"dataset '{protocol.name}' not found: {root} does not exist")
    adapt_list, test_list, folder = root / dom.adapt, root / dom.test, root / dom.folder
    use_list = cfg.source == "list" or (cfg.source == "auto" and adapt_list.is_file())
    if use_list:
        for lst in (adapt_list, test_list):
            if not lst.is_file():
                raise _missing(protocol, f"dataset '{protocol.name}' domain '{dom.name}': image list {lst} not found")
        adapt, d1 = read_image_list(adapt_list, root, n)
        test, d2 = (adapt, 0) if test_list == adapt_list else read_image_list(test_list, root, n)
        skipped["duplicate list entries"] = d1 + d2
        if d1 + d2:
            warnings.warn(f"skipped {d1 + d2} duplicate entries in {adapt_list.name}/{test_list.name}", stacklevel=2)
        src = "builtin" if protocol.builtin else "list"
        return DomainData(protocol.name, dom.name, src, str(adapt_list), adapt, test, open_image, skipped)
    if cfg.source in ("auto", "folder") and folder.is_dir():
        if (folder / "dataset_dict.json").exists() or (folder / "state.json").exists():
            return _hf_domain(protocol, dom, cfg, str(folder), skipped)
        entries = read_folder_tree(folder, protocol.classes)
        return DomainData(protocol.name, dom.name, "folder", str(folder), entries, entries, open_image, skipped)
    raise _missing(
        protocol,
        f"dataset '{protocol.name}' domain '{dom.name}': no data under {root} "
        f"(looked for image list {adapt_list.name} and folder {dom.folder}/)",
    )


def apply_shift(protocol: Protocol, shift: str, data: DomainData) -> ShiftData:
    """Filter adaptation data to the shift's target classes and remap labels (known 0..K-1, others >= K)."""
    split = protocol.split(shift)
    remap = split.label_map()
    target = set(split.target)
    adapt_index = [i for i, e in enumerate(data.adapt) if e.label in target]
    adapt = [(data.adapt[i].ref, remap[data.adapt[i].label]) for i in adapt_index]
    test = [(e.ref, remap[e.label]) for e in data.test]
    if not adapt:
        raise DataError(f"dataset '{protocol.name}' domain '{data.domain}': no adaptation images of the {shift} target classes")
    if not test:
        raise DataError(f"dataset '{protocol.name}' domain '{data.domain}': the test split is empty")
    return ShiftData(protocol, split, data, adapt, test, adapt_index)


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, benchmark label, index), or (image tensor, index) when labels are hidden (adaptation)."""

    def __init__(self, items: Sequence[tuple[str | int, int]], opener: Callable[[str | int], Image.Image], transform,
                 hide_labels: bool = False, indices: Sequence[int] | None = None):
        self.items = list(items)
        self.opener = opener
        self.transform = transform
        self.hide_labels = hide_labels
        self.indices = list(range(len(self.items))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        ref, label = self.items[i]
        image = self.transform(self.opener(ref))
        return (image, i) if self.hide_labels else (image, label, i)


def make_loader(
    items: Sequence[tuple[str | int, int]],
    opener: Callable[[str | int], Image.Image],
    transform,
    batch_size: int,
    shuffle: bool = False,
    workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
    hide_labels: bool = False,
    indices: Sequence[int] | None = None,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    gen = torch.Generator()
    gen.manual_seed(seed)
    return torch.utils.data.DataLoader(
        ImageDataset(items, opener, transform, hide_labels, indices),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=workers,
        generator=gen,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


# ------------------------------------------------------------------------------------------- data check


def check_domain(protocol: Protocol, shift: str, data: DomainData, verify: bool = True, progress: Any = None) -> dict[str, Any]:
    """Count images per split and role, and list missing or unreadable files."""
    split = protocol.split(shift)
    known, target = set(split.known), set(split.target)
    report: dict[str, Any] = {"dataset": protocol.name, "domain": data.domain, "shift": shift,
                              "source": data.source, "location": data.location, "splits": {}}
    missing: list[str] = []
    unreadable: list[str] = []
    checked: set[str | int] = set()
    for role, entries in (("adapt", [e for e in data.adapt if e.label in target]), ("test", data.test)):
        counts = {"images": len(entries), "known": sum(e.label in known for e in entries)}
        counts["unknown"] = counts["images"] - counts["known"]
        counts["classes"] = len({e.label for e in entries})
        report["splits"][role] = counts
        task = progress.add_task(f"checking {data.domain}/{role}", total=len(entries)) if progress else None
        for e in entries:
            if task is not None:
                progress.advance(task)
            if e.ref in checked:
                continue
            checked.add(e.ref)
            if isinstance(e.ref, str) and data.source in ("list", "folder", "builtin"):
                if not Path(e.ref).is_file():
                    missing.append(e.ref)
                    continue
                if verify:
                    try:
                        with Image.open(e.ref) as im:
                            im.convert("RGB")
                    except Exception:  # noqa: BLE001
                        unreadable.append(e.ref)
            elif verify:
                try:
                    data.opener(e.ref)
                except Exception:  # noqa: BLE001
                    unreadable.append(str(e.ref))
    report["missing"] = missing
    report["unreadable"] = unreadable
    report["skipped"] = data.skipped
    return report
