"""Protocols are data: one JSON file per dataset, validated on load.

A protocol file holds the class names in index order, the domains (with the folder and the image lists that
serve adaptation and test), and for every shift the *known* (prompted) classes and the *target* classes
(present in the unlabeled adaptation data). The test split always holds every class of the domain.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.errors import ProtocolError, UeobenchError
from ..core.registry import suggest

SHIFTS: tuple[str, ...] = ("cda", "pda", "oda", "opda", "csda")
FORMAT_VERSION = 1
#: the built-in demo world: the CLI's and the API's default dataset, and what a bare ``--domain real`` means
DEFAULT_DATASET = "shapes"


@dataclass(frozen=True)
class Domain:
    name: str
    folder: str
    adapt: str
    test: str


@dataclass(frozen=True)
class Split:
    """The class roles of one shift. Indices refer to ``Protocol.classes``."""

    shift: str
    known: tuple[int, ...]
    target: tuple[int, ...]
    num_classes: int

    @property
    def unknown(self) -> tuple[int, ...]:
        """Present in the adaptation data but not prompted (open-set classes)."""
        k = set(self.known)
        return tuple(c for c in self.target if c not in k)

    @property
    def absent(self) -> tuple[int, ...]:
        """Prompted but not present in the adaptation data (partial-set classes)."""
        t = set(self.target)
        return tuple(c for c in self.known if c not in t)

    @property
    def num_known(self) -> int:
        return len(self.known)

    def label_map(self) -> dict[int, int]:
        """Original class index -> benchmark label: known classes 0..K-1, every other class >= K.

        Known classes keep their file order, then the rest follow in file order, as in the reference code.
        """
        known = set(self.known)
        order = list(self.known) + [c for c in range(self.num_classes) if c not in known]
        return {orig: new for new, orig in enumerate(order)}


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    homepage: str
    folder: str
    prompt: str
    default_backbone: str
    classes: tuple[str, ...]
    domains: tuple[Domain, ...]
    splits: dict[str, Split] = field(hash=False)
    path: str = ""
    checksum: str = ""
    builtin: str | None = None
    notes: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, shift: str) -> Split:
        if shift not in self.splits:
            raise UeobenchError(f"unknown protocol '{shift}' for dataset '{self.name}'{suggest(shift, list(self.splits))}")
        return self.splits[shift]

    def domain(self, name: str) -> Domain:
        for d in self.domains:
            if d.name.lower() == name.lower():
                return d
        names = [d.name for d in self.domains]
        raise UeobenchError(f"unknown domain '{name}' for dataset '{self.name}'{suggest(name, names)}")

    def has_domain(self, name: str) -> bool:
        return any(d.name.lower() == name.lower() for d in self.domains)

    def roles(self, shift: str) -> dict[str, Any]:
        """Class names in each role: the payload of ``ueobench show protocol --json``."""
        s = self.split(shift)
        names = lambda idx: [self.classes[i] for i in idx]  # noqa: E731
        return {
            "dataset": self.name,
            "shift": shift,
            "num_classes": self.num_classes,
            "known": names(s.known),
            "target": names(s.target),
            "unknown": names(s.unknown),
            "absent": names(s.absent),
        }


# ----------------------------------------------------------------------------------------------- parsing


def _relative_inside(value: str, where: str) -> None:
    """Folders and lists are paths relative to the data root that stay inside it (no absolute path, no '..')."""
    import posixpath

    parts = value.replace("\\", "/")
    if not parts or parts.startswith("/") or ".." in posixpath.normpath(parts).split("/") or "\x00" in parts:
        raise ProtocolError(f"{where}: must be a path relative to the data root that stays inside it")


def _expand(value: Any, n: int, where: str) -> tuple[int, ...]:
    """Expand "all" or a list of inclusive [start, end] ranges into sorted unique class indices."""
    if value == "all":
        return tuple(range(n))
    if not isinstance(value, list) or not value:
        raise ProtocolError(f"{where}: expected \"all\" or a non-empty list of [start, end] ranges, got {value!r}")
    out: list[int] = []
    for r in value:
        if (
            not isinstance(r, list)
            or len(r) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)
        ):
            raise ProtocolError(f"{where}: each range must be [start, end] with integer ends, got {r!r}")
        a, b = r
        if not 0 <= a <= b < n:
            raise ProtocolError(f"{where}: range {r} is outside the {n} classes (0..{n - 1})")
        out.extend(range(a, b + 1))
    if len(set(out)) != len(out):
        raise ProtocolError(f"{where}: ranges overlap")
    return tuple(out)


def _field(d: dict, key: str, typ: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise ProtocolError(f"{where}: missing field '{key}'")
        return default
    v = d[key]
    if not isinstance(v, typ):
        tname = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ProtocolError(f"{where}.{key}: expected {tname}, got {type(v).__name__}")
    return v


def parse_protocol(text: str, path: str) -> Protocol:
    """Validate a protocol document. Every error names the file and the field."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(d, dict):
        raise ProtocolError(f"{path}: the top level must be a JSON object")
    fmt = _field(d, "format", int, path)
    if fmt > FORMAT_VERSION:
        raise ProtocolError(f"{path}.format: version {fmt} is newer than this ueobench ({FORMAT_VERSION}); upgrade ueobench")
    name = _field(d, "name", str, path)
    classes = _field(d, "classes", list, path)
    if not classes or not all(isinstance(c, str) and c.strip() for c in classes):
        raise ProtocolError(f"{path}.classes: expected a non-empty list of non-empty class names")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise ProtocolError(f"{path}.classes: duplicate class names {dupes}")
    n = len(classes)

    raw_domains = _field(d, "domains", list, path)
    if not raw_domains:
        raise ProtocolError(f"{path}.domains: expected at least one domain")
    domains = []
    for i, rd in enumerate(raw_domains):
        w = f"{path}.domains[{i}]"
        if not isinstance(rd, dict):
            raise ProtocolError(f"{w}: expected an object with name, folder, adapt and test")
        dom = Domain(*(_field(rd, k, str, w) for k in ("name", "folder", "adapt", "test")))
        for key in ("folder", "adapt", "test"):
            _relative_inside(getattr(dom, key), f"{w}.{key}")
        domains.append(dom)
    lower = [x.name.lower() for x in domains]
    if len(set(lower)) != len(lower):
        raise ProtocolError(f"{path}.domains: domain names must be unique (ignoring case)")

    raw_shifts = _field(d, "shifts", dict, path)
    splits: dict[str, Split] = {}
    for shift in SHIFTS:
        w = f"{path}.shifts.{shift}"
        if shift not in raw_shifts:
            raise ProtocolError(f"{w}: missing; every protocol defines {', '.join(SHIFTS)}")
        rs = raw_shifts[shift]
        if not isinstance(rs, dict):
            raise ProtocolError(f"{w}: expected an object with 'known' and 'target'")
        known = _expand(rs.get("known"), n, f"{w}.known")
        target = _expand(rs.get("target"), n, f"{w}.target")
        splits[shift] = Split(shift, known, target, n)
    extra = sorted(set(raw_shifts) - set(SHIFTS))
    if extra:
        raise ProtocolError(f"{path}.shifts: unknown shift(s) {extra}; allowed: {', '.join(SHIFTS)}")

    _relative_inside(_field(d, "folder", str, path, name), f"{path}.folder")
    prompt = _field(d, "prompt", str, path, "a photo of a {}.")
    if prompt.count("{}") != 1:
        raise ProtocolError(f"{path}.prompt: must contain exactly one '{{}}' for the class name, got {prompt!r}")
    return Protocol(
        name=name,
        title=_field(d, "title", str, path, name),
        homepage=_field(d, "homepage", str, path, ""),
        folder=_field(d, "folder", str, path, name),
        prompt=prompt,
        default_backbone=_field(d, "default_backbone", str, path, "ViT-B-16:openai"),
        classes=tuple(classes),
        domains=tuple(domains),
        splits=splits,
        path=path,
        checksum="sha256:" + hashlib.sha256(text.encode()).hexdigest(),
        builtin=_field(d, "builtin", str, path, None),
        notes=_field(d, "notes", str, path, ""),
    )


def load_protocol_file(path: str | Path) -> Protocol:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ProtocolError(f"{p}: cannot read protocol file ({e.strerror})") from None
    return parse_protocol(text, str(p))


def builtin_protocol_files() -> dict[str, Path]:
    root = resources.files("ueobench.builtin_protocols")
    return {Path(f.name).stem: Path(str(f)) for f in root.iterdir() if f.name.endswith(".json")}


_CACHE: dict[str, Protocol] = {}


def protocol_files(extra_dirs: list[Path] | None = None) -> dict[str, Path]:
    """Built-in protocol files, plus ``*.json`` in extra folders (a user's own datasets)."""
    files = builtin_protocol_files()
    for d in extra_dirs or []:
        for f in sorted(Path(d).glob("*.json")):
            files[f.stem] = f
    return files


def list_datasets(extra_dirs: list[Path] | None = None) -> list[str]:
    return sorted(protocol_files(extra_dirs))


def load_protocol(dataset: str, extra_dirs: list[Path] | None = None) -> Protocol:
    """Load and validate the protocol file of a dataset by name (or by path to a JSON file)."""
    if dataset.endswith(".json"):
        return load_protocol_file(dataset)
    files = protocol_files(extra_dirs)
    if dataset not in files:
        raise UeobenchError(f"unknown dataset '{dataset}'{suggest(dataset, list(files))}")
    key = str(files[dataset])
    if key not in _CACHE:
        proto = load_protocol_file(files[dataset])
        if proto.name != dataset:
            raise ProtocolError(f"{files[dataset]}.name: '{proto.name}' does not match the file name '{dataset}'")
        _CACHE[key] = proto
    return _CACHE[key]
