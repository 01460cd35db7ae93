"""Image sources: image lists, folder trees and Hugging Face datasets, each read into the same ``Entry`` list.

An ``Entry`` says where an image is (a file path, or a row of a Hugging Face split) and its class index in the
protocol file; ``DomainData`` holds the entries of one domain's adaptation and test lists before any shift.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image, UnidentifiedImageError

from ..core.errors import DataError
from .protocols import Domain, Protocol
from .settings import DatasetSettings

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


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
    #: each image's content key (``sha256:...``, or a Hugging Face split fingerprint and row), filled by the
    #: data fingerprint; the feature cache is keyed by it
    content: dict[str | int, str] = field(default_factory=dict)


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


def read_image_list(path: Path, root: Path, num_classes: int, label_base: int = 0) -> tuple[list[Entry], int]:
    """Parse ``relative/path label`` lines (labels from ``label_base``). Returns the entries and the number of
    duplicate lines skipped."""
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
        rel, label = parts[0].strip(), int(parts[1]) - label_base
        if not 0 <= label < num_classes:
            raise DataError(f"{path}:{n}: label {label + label_base} is outside the protocol's {num_classes} classes "
                            f"({label_base}..{num_classes - 1 + label_base})")
        full = inside(rel)
        if full is None:
            raise DataError(f"{path}:{n}: path {rel!r} escapes the dataset root {root}; list paths must be relative to it")
        if full in seen:  # compared as resolved paths: ./x.png, a//x.png and a/../x.png are one image
            dupes += 1
            continue
        seen.add(full)
        entries.append(Entry(full, label))
    return entries, dupes


def read_folder_tree(folder: Path, classes: Sequence[str], class_folders: str = "names",
                     wnids: Sequence[str] | None = None) -> list[Entry]:
    """``<folder>/<class folder>/<image>``; class folders are matched to the protocol's classes by name
    (``normalise_name``), by WordNet id (``wnids``), or by class index; with ``class_folders="none"`` every image
    under the folder is class 0 (an unlabeled OOD set)."""
    if class_folders == "wnids":
        index = {w: i for i, w in enumerate(wnids or ())}
        how = "a WordNet id of the protocol (ueobench show protocol --json lists them)"
    elif class_folders == "indices":
        index = {str(i): i for i in range(len(classes))}
        how = f"a class index 0..{len(classes) - 1}"
    else:
        index = {normalise_name(c): i for i, c in enumerate(classes)}
        how = "a class name (ueobench show protocol lists the classes)"
    entries: list[Entry] = []
    root = os.path.realpath(folder)

    def inside(p: Path) -> bool:
        return os.path.realpath(p).startswith(root + os.sep)

    if class_folders == "none":
        subs = [(folder, 0)]
    else:
        subs = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if not inside(sub):
                raise DataError(f"{sub}: class folder is a link out of {folder}; folder trees may not leave their root")
            key = normalise_name(sub.name) if class_folders == "names" else sub.name
            if key not in index:
                raise DataError(f"{sub}: folder matches no class of the protocol; it should be {how}; rename or "
                                f"remove it")
            subs.append((sub, index[key]))
    for sub, label in subs:
        for f in sorted(sub.rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                if not inside(f):
                    raise DataError(f"{f}: image is a link out of {folder}; folder trees may not leave their root")
                entries.append(Entry(str(f), label))
    return entries


def read_split_json(path: Path, key: str, images: Path, classes: Sequence[str]) -> list[Entry]:
    """One split of a CoOp ``split_zhou_*.json`` (``{"train"|"val"|"test": [[path, label, classname], ...]}``,
    paths relative to ``images``): its labels are CoOp's, checked against the protocol's class names."""
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot read split file {path} ({e})") from None
    keys = key.split("+")  # "train+val": the splits one after the other
    for k in keys:
        if not isinstance(doc, dict) or k not in doc or not isinstance(doc[k], list):
            have = ", ".join(doc) if isinstance(doc, dict) else type(doc).__name__
            raise DataError(f"{path}: no split '{k}' (it has {have})")
    items = [(k, n, item) for k in keys for n, item in enumerate(doc[k])]
    inside = _Resolver(images)
    names = [normalise_name(c) for c in classes]
    out: list[Entry] = []
    for key, n, item in items:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], int) and isinstance(item[2], str)):
            raise DataError(f"{path}: {key}[{n}]: expected [path, label, classname], got {item!r:.80}")
        rel, label, name = item
        if not 0 <= label < len(classes):
            raise DataError(f"{path}: {key}[{n}]: label {label} is outside the protocol's {len(classes)} classes")
        if normalise_name(name) != names[label]:
            raise DataError(f"{path}: {key}[{n}]: label {label} is '{name}' here but '{classes[label]}' in the "
                            f"protocol; this split file is not the one the protocol was written from")
        full = inside(rel)
        if full is None:
            raise DataError(f"{path}: {key}[{n}]: path {rel!r} escapes the image folder {images}")
        out.append(Entry(full, label))
    return out


def _hf_labels(ds: Any, column: str, classes: Sequence[str], where: str) -> list[int | None]:
    """Each row's class index in the protocol, or None for a row without a label (``datasets``' -1 or None).

    A ClassLabel is matched to the protocol by class name; plain integers are protocol indices; strings are class
    names. Anything else (floats, out-of-range integers, unknown names) is refused with the row that holds it."""
    feature = ds.features.get(column)
    if feature is None:
        raise DataError(f"{where}: no label column '{column}' (columns: {', '.join(ds.column_names)}); set label_column")
    index = {normalise_name(c): i for i, c in enumerate(classes)}
    names = getattr(feature, "names", None)
    table = None
    if names:
        missing = [n for n in names if normalise_name(n) not in index]
        if missing:
            raise DataError(f"{where}: class label(s) {missing[:5]} match no protocol class")
        table = [index[normalise_name(n)] for n in names]
    out: list[int | None] = []
    for row, v in enumerate(ds[column]):
        if v is None or (isinstance(v, int) and not isinstance(v, bool) and v == -1):
            out.append(None)  # the library's "no label"
        elif isinstance(v, str):
            if normalise_name(v) not in index:
                raise DataError(f"{where}: row {row}: label {v!r} matches no protocol class (ueobench show protocol "
                                f"lists them)")
            out.append(index[normalise_name(v)])
        elif isinstance(v, int) and not isinstance(v, bool):
            bound = len(table) if table is not None else len(classes)
            if not 0 <= v < bound:
                raise DataError(f"{where}: row {row}: label {v} is outside the {bound} classes (0..{bound - 1})")
            out.append(table[v] if table is not None else v)
        else:
            raise DataError(f"{where}: row {row}: label {v!r} is a {type(v).__name__}; the label column must hold "
                            f"class indices or class names")
    return out


def read_hf(cfg: DatasetSettings, location: str, domain: Domain, classes: Sequence[str]) -> dict[str, Any]:
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
        if not isinstance(ds.features[cfg.image_column], datasets.Image):
            kind = type(ds.features[cfg.image_column]).__name__
            raise DataError(f"{where}: column '{cfg.image_column}' holds {kind} values, not images; set image_column "
                            f"to a column of the datasets.Image type")
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


def _hf_domain(protocol: Protocol, dom: Domain, cfg: DatasetSettings, location: str, skipped: dict) -> DomainData:
    splits = read_hf(cfg, location, dom, protocol.classes)
    entries: dict[str, list[Entry]] = {}
    where = f"Hugging Face dataset {location}"
    unlabelled = 0
    for role, ds in splits.items():
        labels = _hf_labels(ds, cfg.label_column, protocol.classes, where)
        entries[role] = [Entry(f"{role}:{i}", y) for i, y in enumerate(labels) if y is not None]
        unlabelled += sum(y is None for y in labels)
    if unlabelled:
        import warnings

        skipped["rows without a label"] = unlabelled
        warnings.warn(f"{where}: skipped {unlabelled} rows without a label (-1 or None)", stacklevel=2)
    opener = _HFOpener(splits, cfg.image_column)
    content = ",".join(f"{role}={getattr(ds, '_fingerprint', None)}" for role, ds in sorted(splits.items()))
    return DomainData(protocol.name, dom.name, "hf", location, entries["adapt"], entries["test"], opener, skipped,
                      content)




def read_name_list(path: Path, images: Path, classes: Sequence[str], suffix: str = ".jpg") -> list[Entry]:
    """``<image id> <class name>`` lines (FGVC-Aircraft's ``images_variant_*.txt``, as CoOp reads them): the
    image is ``<images>/<id>.jpg``, the label the class's index in the protocol (names compared exactly)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read image list {path} ({e})") from None
    index = {c: i for i, c in enumerate(classes)}
    inside = _Resolver(images)
    out: list[Entry] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.strip().split(" ", 1)
        if len(parts) != 2 or parts[1] not in index:
            raise DataError(f"{path}:{n}: expected '<image id> <class name>' with a class of the protocol, got "
                            f"{line.strip()!r:.80}")
        full = inside(parts[0] + suffix)
        if full is None:
            raise DataError(f"{path}:{n}: image id {parts[0]!r} escapes the image folder {images}")
        out.append(Entry(full, index[parts[1]]))
    return out
