"""Protocols are data: one JSON file per dataset, validated on load.

A protocol file holds the class names in index order, the domains (with the folder and the image lists that
serve adaptation and test), and for every shift the *known* (prompted) classes and the *target* classes
(present in the unlabeled adaptation data). The test split always holds every class of the domain.

A *composition* mixes images of other datasets into a domain as unknowns (cross-dataset open-set, as MCM,
CLIPN, ZS-NTTA and CLIPTTA evaluate): a base shift of the dataset plus one or more OOD parts (dataset, domain,
classes, ratio of OOD to ID images per split), drawn with a fixed seed. Named compositions live in the ID
dataset's protocol file (``compositions``); ``ood:DATASET[/DOMAIN][@RATIO]`` names one ad hoc. OOD part j gets
the label ``num_classes + j``: always >= K, never a known label, and with no class name of the ID dataset.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.errors import ProtocolError, UeobenchError
from ..core.registry import suggest

SHIFTS: tuple[str, ...] = ("cda", "pda", "oda", "opda", "csda")
#: a protocol file may add shifts of its own beside the standard five (CRoFT's Setup I: ``croft1-s1``..``s3``);
#: ``all`` never includes them
NAMED_SHIFT = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
FORMAT_VERSION = 1
#: the built-in demo world: the CLI's and the API's default dataset, and what a bare ``--domain real`` means
DEFAULT_DATASET = "shapes"


#: how a folder tree names its class folders: by class name (normalised), WordNet id (ImageNet and its
#: variants, with the protocol's ``wnids``), class index (ImageNet-V2), or not at all (an OOD set of unlabeled
#: images: every image is class 0)
CLASS_FOLDERS = ("names", "wnids", "indices", "none")


@dataclass(frozen=True)
class Domain:
    """Where one domain's images are: image lists ``adapt`` / ``test`` (``path label`` lines, or ``FILE.json:KEY``
    for a CoOp ``split_zhou`` file, whose paths are relative to ``images``), else the folder tree ``folder``."""

    name: str
    folder: str
    adapt: str
    test: str
    label_base: int = 0  # the lists' first label (PACS's official lists count from 1)
    class_folders: str = "names"
    images: str = ""  # the folder a split file's paths are relative to (default: the domain's folder)


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
class OODPart:
    """Images of another dataset's domain that enter a composition as one unknown label."""

    dataset: str
    domain: str
    classes: tuple[str, ...] | None  # None: every class of the OOD dataset not named like an ID class
    ratio: float  # OOD images per ID image, in each split
    #: instead of a ratio: this many images of each OOD class (all of a class that has fewer), one draw from all
    #: of the OOD domain's images serving both splits (CRoFT's ``generate_fewshot_dataset(ood, 100)``)
    per_class: int | None = None


@dataclass(frozen=True)
class Composition:
    name: str
    base: str
    parts: tuple[OODPart, ...]
    seed: int = 0
    notes: str = ""

    def describe(self) -> dict[str, Any]:
        """What the record and ``show protocol`` say about it (part of the data's identity)."""
        return {"name": self.name, "base": self.base, "seed": self.seed, "notes": self.notes,
                "ood": [{"dataset": p.dataset, "domain": p.domain, "classes": list(p.classes) if p.classes else None,
                         **({"per_class": p.per_class} if p.per_class else {"ratio": p.ratio})}
                        for p in self.parts]}


AD_HOC = "ood:"


def parse_ad_hoc(shift: str) -> Composition:
    """``ood:DATASET[/DOMAIN][@RATIO]`` -> a composition on ``csda`` (every ID class known and present, as the
    cross-dataset OOD benchmarks have it) with one OOD part: the OOD dataset's classes not named like an ID class
    (a name test only: a named composition lists its classes when names do not tell)."""
    body = shift[len(AD_HOC):]
    ratio = 1.0
    if "@" in body:
        body, r = body.rsplit("@", 1)
        try:
            ratio = float(r)
        except ValueError:
            ratio = -1.0
        if not 0 < ratio < 1e6:
            raise UeobenchError(f"bad protocol '{shift}': the ratio after '@' must be a positive number of OOD "
                                f"images per ID image, e.g. ood:shapes/real@0.5")
    dataset, _, domain = body.partition("/")
    if not dataset:
        raise UeobenchError(f"bad protocol '{shift}': name the OOD dataset, e.g. ood:shapes/real@0.5")
    return Composition(shift, "csda", (OODPart(dataset, domain, None, ratio),))


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
    compositions: dict[str, Composition] = field(default_factory=dict, hash=False)
    wnids: tuple[str, ...] | None = None  # WordNet ids in class order (ImageNet and its variants)
    source: str = ""  # where the class names, their order and the splits come from

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def composition(self, shift: str) -> Composition | None:
        """The composition a shift names (a named one of this file, or ``ood:...``), validated against the OOD
        datasets' protocols; None for a plain shift."""
        if shift in self.splits:
            return None
        if shift in self.compositions:
            comp = self.compositions[shift]
        elif shift.startswith(AD_HOC):
            comp = parse_ad_hoc(shift)
        else:
            names = list(self.splits) + list(self.compositions)
            import difflib

            close = difflib.get_close_matches(shift, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UeobenchError(f"unknown protocol '{shift}' for dataset '{self.name}'{hint} (it has "
                                f"{', '.join(names)}; ood:DATASET/DOMAIN@RATIO mixes in another dataset's images)")
        return resolve_composition(self, comp)

    def split(self, shift: str) -> Split:
        if shift in self.splits:
            return self.splits[shift]
        comp = self.composition(shift)
        assert comp is not None
        base = self.splits[comp.base]
        n = self.num_classes
        ood = tuple(range(n, n + len(comp.parts)))
        return Split(shift, base.known, base.target + ood, n + len(comp.parts))

    def class_name(self, index: int, shift: str | None = None) -> str:
        """A class's name; an OOD part's label is named after its dataset and domain."""
        if index < self.num_classes:
            return self.classes[index]
        comp = self.composition(shift) if shift else None
        if comp is None or index - self.num_classes >= len(comp.parts):
            raise IndexError(f"class {index} of dataset '{self.name}'")
        part = comp.parts[index - self.num_classes]
        return f"OOD: {part.dataset}/{part.domain}"

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
        names = lambda idx: [self.class_name(i, shift) for i in idx]  # noqa: E731
        return {
            "dataset": self.name,
            "shift": shift,
            "num_classes": self.num_classes,
            "known": names(s.known),
            "target": names(s.target),
            "unknown": names(s.unknown),
            "absent": names(s.absent),
            **({"composition": comp.describe()} if (comp := self.composition(shift)) else {}),
        }


def resolve_composition(proto: Protocol, comp: Composition) -> Composition:
    """Check a composition's parts against their datasets (dataset, domain and classes exist) and fill in the
    defaults: the OOD dataset's first domain, and every class not named like one of ``proto``'s classes."""
    if comp.base not in proto.splits:
        raise ProtocolError(f"{proto.path}.compositions.{comp.name}.base: unknown shift '{comp.base}'"
                            f"{suggest(comp.base, list(proto.splits))}")
    own = {c.strip().lower() for c in proto.classes}
    parts = []
    for p in comp.parts:
        try:
            other = load_protocol(p.dataset)
        except UeobenchError as e:
            raise UeobenchError(f"protocol '{comp.name}': {e}") from None
        if other.name == proto.name:
            raise UeobenchError(f"protocol '{comp.name}': the OOD images must come from another dataset than "
                                f"'{proto.name}'; its own unknown classes are the oda/opda shifts")
        domain = other.domain(p.domain).name if p.domain else other.domains[0].name
        if p.classes is None:
            classes = tuple(c for c in other.classes if c.strip().lower() not in own)
        else:
            missing = [c for c in p.classes if c not in other.classes]
            if missing:
                raise ProtocolError(f"{proto.path}.compositions.{comp.name}: {missing} are not classes of "
                                    f"'{other.name}'{suggest(missing[0], list(other.classes))}")
            clash = [c for c in p.classes if c.strip().lower() in own]
            if clash:
                raise ProtocolError(f"{proto.path}.compositions.{comp.name}: OOD classes {clash} are also classes "
                                    f"of '{proto.name}'")
            classes = tuple(p.classes)
        if not classes:
            raise UeobenchError(f"protocol '{comp.name}': every class of '{other.name}' is also a class of "
                                f"'{proto.name}'; nothing is out of distribution")
        parts.append(OODPart(other.name, domain, classes, p.ratio, p.per_class))
    return Composition(comp.name, comp.base, tuple(parts), comp.seed, comp.notes)


# ----------------------------------------------------------------------------------------------- parsing


def _relative_inside(value: str, where: str) -> None:
    """Folders and lists are paths relative to the data root that stay inside it (no absolute path, no '..')."""
    import posixpath

    parts = value.replace("\\", "/")
    if not parts or parts.startswith("/") or ".." in posixpath.normpath(parts).split("/") or "\x00" in parts:
        raise ProtocolError(f"{where}: must be a path relative to the data root that stays inside it")


def _draw(value: dict, n: int, where: str) -> tuple[int, ...]:
    """``{"draw": K, "seed": S}``: the K classes that ``numpy.random.seed(S); numpy.random.choice(classes, K,
    replace=False)`` picks (CRoFT's Setup I split, drawn with numpy's legacy generator right after seeding), sorted.
    Kept as the rule, not as 400 numbers, so the file says how the split was made."""
    import numpy as np

    if set(value) != {"draw", "seed"} or not all(isinstance(value[k], int) and not isinstance(value[k], bool)
                                                 for k in value):
        raise ProtocolError(f"{where}: a drawn class set is {{\"draw\": K, \"seed\": S}} with integers K and S, got "
                            f"{value!r}")
    k, seed = value["draw"], value["seed"]
    if not 1 <= k <= n or not 0 <= seed < 2**32:
        raise ProtocolError(f"{where}: draw {k} of the {n} classes with a seed in 0..2**32-1")
    return tuple(sorted(int(i) for i in np.random.RandomState(seed).choice(n, k, replace=False)))


def _expand(value: Any, n: int, where: str) -> tuple[int, ...]:
    """Expand "all", a list of inclusive [start, end] ranges, or a seeded draw into sorted unique class indices."""
    if value == "all":
        return tuple(range(n))
    if isinstance(value, dict):
        return _draw(value, n, where)
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
    if dupes and not isinstance(d.get("wnids"), list):  # CLIP's ImageNet names repeat two; the wnids tell them apart
        raise ProtocolError(f"{path}.classes: duplicate class names {dupes} (allowed only with 'wnids' that tell "
                            f"them apart)")
    n = len(classes)

    raw_domains = _field(d, "domains", list, path)
    if not raw_domains:
        raise ProtocolError(f"{path}.domains: expected at least one domain")
    domains = []
    for i, rd in enumerate(raw_domains):
        w = f"{path}.domains[{i}]"
        if not isinstance(rd, dict):
            raise ProtocolError(f"{w}: expected an object with name, folder, adapt and test")
        base = _field(rd, "label_base", int, w, 0)
        if base not in (0, 1):
            raise ProtocolError(f"{w}.label_base: expected 0 or 1 (the lists' first label)")
        folders = _field(rd, "class_folders", str, w, "names")
        if folders not in CLASS_FOLDERS:
            raise ProtocolError(f"{w}.class_folders: expected one of {', '.join(CLASS_FOLDERS)}, got {folders!r}")
        dom = Domain(*(_field(rd, k, str, w) for k in ("name", "folder", "adapt", "test")), label_base=base,
                     class_folders=folders, images=_field(rd, "images", str, w, ""))
        for key in ("folder", "adapt", "test", "images"):
            value = getattr(dom, key)
            if key in ("adapt", "test") and ".json:" in value:
                value = value.split(".json:", 1)[0] + ".json"
            if value or key != "images":
                _relative_inside(value, f"{w}.{key}")
        domains.append(dom)
    lower = [x.name.lower() for x in domains]
    if len(set(lower)) != len(lower):
        raise ProtocolError(f"{path}.domains: domain names must be unique (ignoring case)")

    wnids = _field(d, "wnids", list, path, None)
    if wnids is not None:
        if len(wnids) != n or len(set(wnids)) != n or not all(isinstance(x, str) and x for x in wnids):
            raise ProtocolError(f"{path}.wnids: expected {n} unique WordNet ids, one per class in class order")
    if any(dom.class_folders == "wnids" for dom in domains) and wnids is None:
        raise ProtocolError(f"{path}.wnids: a domain names its class folders by WordNet id; list the ids")

    raw_shifts = _field(d, "shifts", dict, path)
    if not raw_shifts:
        raise ProtocolError(f"{path}.shifts: define at least one of {', '.join(SHIFTS)}")
    splits: dict[str, Split] = {}
    named = [s for s in raw_shifts if s not in SHIFTS]
    for shift in [s for s in SHIFTS if s in raw_shifts] + named:  # a dataset defines the shifts it has
        w = f"{path}.shifts.{shift}"
        if shift in named and not NAMED_SHIFT.fullmatch(shift):
            raise ProtocolError(f"{w}: a named shift is lower-case letters, digits and '-' (not 'ood:...'); the "
                                f"standard ones are {', '.join(SHIFTS)}")
        rs = raw_shifts[shift]
        if not isinstance(rs, dict):
            raise ProtocolError(f"{w}: expected an object with 'known' and 'target'")
        known = _expand(rs.get("known"), n, f"{w}.known")
        target = _expand(rs.get("target"), n, f"{w}.target")
        splits[shift] = Split(shift, known, target, n)

    compositions = _parse_compositions(_field(d, "compositions", dict, path, {}), splits, path)

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
        compositions=compositions,
        wnids=tuple(wnids) if wnids else None,
        source=_field(d, "source", str, path, ""),
    )


def _parse_compositions(raw: dict, splits: dict[str, Split], path: str) -> dict[str, Composition]:
    out: dict[str, Composition] = {}
    for name, rc in raw.items():
        w = f"{path}.compositions.{name}"
        if name in splits or name.startswith(AD_HOC) or not name or "," in name:
            raise ProtocolError(f"{w}: a composition needs a name of its own (not a shift, no 'ood:' prefix, "
                                f"no comma)")
        if not isinstance(rc, dict):
            raise ProtocolError(f"{w}: expected an object with 'base' and 'ood'")
        base = _field(rc, "base", str, w, "csda")
        if base not in splits:
            raise ProtocolError(f"{w}.base: unknown shift '{base}'; use one of {', '.join(splits)}")
        seed = _field(rc, "seed", int, w, 0)
        raw_parts = _field(rc, "ood", list, w)
        if not raw_parts:
            raise ProtocolError(f"{w}.ood: expected at least one OOD part")
        parts = []
        for i, rp in enumerate(raw_parts):
            wp = f"{w}.ood[{i}]"
            if not isinstance(rp, dict):
                raise ProtocolError(f"{wp}: expected an object with 'dataset', 'domain', 'classes' and 'ratio'")
            classes = _field(rp, "classes", (list, type(None)), wp, None)
            if classes is not None and (not classes or not all(isinstance(c, str) for c in classes)):
                raise ProtocolError(f"{wp}.classes: expected a non-empty list of class names (or leave it out)")
            ratio = _field(rp, "ratio", (int, float), wp, 1.0)
            if isinstance(ratio, bool) or not 0 < ratio < 1e6:
                raise ProtocolError(f"{wp}.ratio: expected a positive number of OOD images per ID image")
            per_class = _field(rp, "per_class", int, wp, None)
            if per_class is not None and ("ratio" in rp or isinstance(per_class, bool) or per_class < 1):
                raise ProtocolError(f"{wp}.per_class: expected a positive number of images per OOD class, without "
                                    f"'ratio'")
            parts.append(OODPart(_field(rp, "dataset", str, wp), _field(rp, "domain", str, wp, ""),
                                 tuple(classes) if classes else None, float(ratio), per_class))
        out[name] = Composition(name, base, tuple(parts), seed, _field(rc, "notes", str, w, ""))
    return out


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
