"""One domain's data, resolved once: its protocol, image entries, content fingerprint and the shift's labels.

``resolve_data`` is the one call planning makes: it picks the dataset (``resolve_dataset``), reads the domain's
images from the first source that exists (``load_domain``), fingerprints them (``data_fingerprint``) and applies
the shift (``apply_shift``): the adaptation split keeps the shift's target classes, and labels are remapped as the
reference code does, known classes 0..K-1 and every other class >= K.

The data fingerprint is content: every image's path relative to the dataset root, its label and the SHA-256 of
its bytes (remembered per file version by ``ueobench.core.content``), or, for Hugging Face datasets, the
library's own fingerprint of each split. Where the data lives on this machine never enters it, so a sweep
planned on a login node has the ids its workers compute, whatever their mount points.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..core.errors import DataError, UeobenchError
from ..core.content import content_hashes
from ..core.registry import suggest
from . import settings as settings_mod
from . import worlds
from .protocols import DEFAULT_DATASET, Composition, Protocol, Split, list_datasets, load_protocol
from .settings import Settings
from .source_split import SourceData, split_source
from .arrays import FORMATS as ARRAY_FORMATS
from .arrays import ArrayImages, read_array_file
from .sources import (
    DomainData,
    Entry,
    _hf_domain,
    open_image,
    read_folder_tree,
    read_image_list,
    read_name_list,
    read_split_json,
)


@dataclass
class ShiftData:
    """Entries of one (dataset, shift, domain) with benchmark labels (known 0..K-1, others >= K)."""

    protocol: Protocol
    split: Split
    domain: DomainData
    adapt: list[tuple[str | int, int]]
    test: list[tuple[str | int, int]]
    adapt_index: list[int]  # positions of ``adapt`` in ``domain.adapt``
    test_index: list[int] | None = None  # positions of ``test`` in ``domain.test`` (None: all of it)
    #: images left out of both splits because a labeled-source model trained on them (source == target)
    excluded_train: int = 0

    @property
    def known_names(self) -> list[str]:
        return [self.protocol.classes[i] for i in self.split.known]


# ------------------------------------------------------------------------------------------- resolution


def _missing(protocol: Protocol, message: str) -> DataError:
    where = f"; the dataset is published at {protocol.homepage}" if protocol.homepage else ""
    return DataError(f"{message}{where}")


def dataset_root(protocol: Protocol, data_root: str | None = None, progress: Any = None,
                 settings: Settings | None = None) -> Path:
    """The folder of one dataset; a built-in world (``shapes``, ``shapes65``) is generated into the cache on first use."""
    if protocol.builtin:
        doms = [(d.name, d.folder, d.adapt, d.test) for d in protocol.domains]
        try:
            return worlds.generate(list(protocol.classes), doms, progress=progress, world=protocol.builtin)
        except OSError as e:
            from ..core.paths import cache_root

            raise UeobenchError(f"cannot write the built-in dataset under {cache_root()} ({e.strerror}); set "
                                f"UEOBENCH_CACHE to a writable folder") from None
    settings = settings or settings_mod.load()
    cfg = settings.dataset(protocol.name)
    if cfg.root:
        return Path(cfg.root).expanduser()
    root, _ = settings.resolve_root(data_root)
    if root is None:
        raise _missing(
            protocol,
            f"no data root for dataset '{protocol.name}': pass --data-root DIR, set ${settings_mod.ENV_DATA}, "
            f"or put data_root in {settings_mod.CONFIG_FILE}",
        )
    return root / protocol.folder


def is_available(protocol: Protocol, data_root: str | None = None, settings: Settings | None = None) -> bool:
    """True when data for this dataset can be found without generating or downloading anything."""
    if protocol.builtin:
        return True
    try:
        settings = settings or settings_mod.load()
        cfg = settings.dataset(protocol.name)
        if cfg.source == "hf" and cfg.hf_path:
            return True
        return dataset_root(protocol, data_root, settings=settings).is_dir()
    except UeobenchError:
        return False


def load_domain(protocol: Protocol, domain: str, data_root: str | None = None, progress: Any = None,
                settings: Settings | None = None) -> DomainData:
    """Find and read the images of one domain from the first source that exists."""
    settings = settings or settings_mod.load()
    dom = protocol.domain(domain)
    cfg = settings.dataset(protocol.name)
    skipped = {"duplicate list entries": 0}
    if cfg.source == "hf" and cfg.hf_path:
        return _hf_domain(protocol, dom, cfg, cfg.hf_path, skipped)
    root = dataset_root(protocol, data_root, progress, settings)
    n = protocol.num_classes
    if cfg.source == "hf":
        return _hf_domain(protocol, dom, cfg, str(root / dom.folder), skipped)
    if not root.is_dir():
        raise _missing(protocol, f"dataset '{protocol.name}' not found: {root} does not exist")
    if dom.adapt.rpartition(":")[2] in ARRAY_FORMATS:  # CIFAR's pickled batches, SVHN's .mat
        return _array_domain(protocol, dom, root, skipped)
    if ".json:" in dom.adapt or dom.adapt.endswith(":names"):  # a CoOp split file, or id + class-name lists
        return _split_file_domain(protocol, dom, root, skipped)
    adapt_list, test_list, folder = root / dom.adapt, root / dom.test, root / dom.folder
    use_list = cfg.source == "list" or (cfg.source == "auto" and adapt_list.is_file())
    if use_list:
        for lst in (adapt_list, test_list):
            if not lst.is_file():
                raise _missing(protocol, f"dataset '{protocol.name}' domain '{dom.name}': image list {lst} not found")
        adapt, d1 = read_image_list(adapt_list, root, n, dom.label_base)
        test, d2 = (adapt, 0) if test_list == adapt_list else read_image_list(test_list, root, n, dom.label_base)
        skipped["duplicate list entries"] = d1 + d2
        if d1 + d2:
            warnings.warn(f"skipped {d1 + d2} duplicate entries in {adapt_list.name}/{test_list.name}", stacklevel=2)
        src = "builtin" if protocol.builtin else "list"
        return DomainData(protocol.name, dom.name, src, str(adapt_list), adapt, test, open_image, skipped)
    if cfg.source in ("auto", "folder") and folder.is_dir():
        if (folder / "dataset_dict.json").exists() or (folder / "state.json").exists():
            return _hf_domain(protocol, dom, cfg, str(folder), skipped)
        entries = read_folder_tree(folder, protocol.classes, dom.class_folders, protocol.wnids)
        return DomainData(protocol.name, dom.name, "folder", str(folder), entries, entries, open_image, skipped)
    raise _missing(
        protocol,
        f"dataset '{protocol.name}' domain '{dom.name}': no data under {root} "
        f"(looked for image list {adapt_list.name} and folder {dom.folder}/)",
    )


def _array_domain(protocol: Protocol, dom: Any, root: Path, skipped: dict) -> DomainData:
    """A domain whose images are rows of array files (``FILE:cifar``, ``FILE:svhn``): refs are
    ``DATASET:FILE#ROW``, the content fingerprint the SHA-256 of each file. A one-class protocol (an OOD set)
    labels every row 0."""
    import numpy as np

    files: dict[str, tuple[str, str]] = {}
    opener = ArrayImages(files, fallback=open_image)
    lists: dict[str, list[Entry]] = {}
    digests = []
    n = protocol.num_classes
    for role in ("adapt", "test"):
        rel, _, fmt = getattr(dom, role).rpartition(":")
        path = root / rel
        if not path.is_file():
            raise _missing(protocol, f"dataset '{protocol.name}' domain '{dom.name}': array file {path} not found")
        prefix = f"{protocol.name}:{rel}"
        if prefix not in files:
            images, labels = read_array_file(path, fmt)
            files[prefix] = (str(path), fmt)
            opener.preload(prefix, images)
            digests.append(f"{rel}=sha256:{content_hashes().sha256(path)}")
            if n == 1:
                labels = np.zeros_like(labels)
            elif len(labels) and (labels.min() < 0 or labels.max() >= n):
                raise DataError(f"{path}: labels {labels.min()}..{labels.max()} are outside the {n} classes of "
                                f"'{protocol.name}'")
            lists[prefix] = [Entry(f"{prefix}#{i}", int(y)) for i, y in enumerate(labels)]
        lists[role] = lists[prefix]
    return DomainData(protocol.name, dom.name, "array", str(root / dom.adapt.rpartition(":")[0]), lists["adapt"],
                      lists["test"], opener, skipped, ",".join(digests))


def _split_file_domain(protocol: Protocol, dom: Any, root: Path, skipped: dict) -> DomainData:
    """A domain read from a CoOp split file (``FILE.json:KEY`` for adapt and test, paths under ``images``)."""
    lists = {}
    images = root / (dom.images or dom.folder)
    for role in ("adapt", "test"):
        value = getattr(dom, role)
        if value.endswith(":names"):
            path = root / value[: -len(":names")]
        else:
            file, _, key = value.partition(".json:")
            path = root / (file + ".json")
        if not path.is_file():
            raise _missing(protocol, f"dataset '{protocol.name}' domain '{dom.name}': split file {path} not found")
        lists[role] = (read_name_list(path, images, protocol.classes) if value.endswith(":names")
                       else read_split_json(path, key, images, protocol.classes))
    where = str(root / dom.adapt.rsplit(":", 1)[0]) + (".json" if ".json:" in dom.adapt else "")
    return DomainData(protocol.name, dom.name, "list", where, lists["adapt"], lists["test"], open_image, skipped)


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


def compose(protocol: Protocol, comp: Composition, data: DomainData, checksum: str,
            ood: list[tuple[DomainData, str]]) -> tuple[DomainData, str]:
    """One domain with a composition's OOD images mixed in: per split, round(ratio x ID images) of each part's
    images of its classes (seeded draw, without replacement, in list order), labelled ``num_classes + j``.

    The checksum is content: the ID domain's and every OOD domain's own fingerprints (each relative to its own
    root), the composition and the images drawn, so nothing about where either dataset lives enters it."""
    import numpy as np

    if data.source == "hf" or any(d.source == "hf" for d, _ in ood):
        raise DataError(f"protocol '{comp.name}': compositions read image files; a Hugging Face dataset cannot "
                        f"be mixed in yet (export it to a folder tree or image list)")
    base = protocol.split(comp.base)
    target = set(base.target)
    n_id = {"adapt": sum(1 for e in data.adapt if e.label in target), "test": len(data.test)}
    # one stream for adaptation and test (ImageNet's val, as test-time adaptation runs): one draw from all of the
    # OOD domain's images serves both; separate ID splits keep separate OOD splits
    shared = [e.ref for e in data.adapt] == [e.ref for e in data.test]
    rng = np.random.default_rng(comp.seed)
    extra: dict[str, list[Entry]] = {"adapt": [], "test": []}
    drawn: list[dict[str, Any]] = []
    for j, ((dd, ood_sum), part) in enumerate(zip(ood, comp.parts)):
        other = load_protocol(part.dataset)
        wanted = {other.classes.index(c) for c in part.classes or ()}
        record: dict[str, Any] = {"dataset": part.dataset, "domain": part.domain, "checksum": ood_sum}
        union = list({e.ref: e for e in dd.adapt + dd.test}.values())
        if part.per_class:  # N of each OOD class from all of the domain's images, one draw for both splits
            picked = []
            for c in sorted(wanted):
                idx = [i for i, e in enumerate(union) if e.label == c]
                picked += sorted(rng.permutation(idx)[:part.per_class].tolist()) if idx else []
            extra["test"] += [Entry(union[i].ref, protocol.num_classes + j) for i in picked]
            extra["adapt"] += [Entry(union[i].ref, protocol.num_classes + j) for i in picked]
            record["test"] = record["adapt"] = picked
            drawn.append(record)
            continue
        for role in (("test",) if shared else ("adapt", "test")):
            pool = [e for e in (union if shared else getattr(dd, role)) if e.label in wanted]
            need = int(round(part.ratio * n_id[role]))
            if need > len(pool):
                raise DataError(f"protocol '{comp.name}': {role} needs {need} OOD images ({part.ratio:g} per ID "
                                f"image) but {part.dataset}/{part.domain} has {len(pool)} of its classes; use a "
                                f"ratio of at most {math.floor(len(pool) / n_id[role] * 1000) / 1000:g}")
            pick = sorted(rng.permutation(len(pool))[:need].tolist())
            extra[role] += [Entry(pool[i].ref, protocol.num_classes + j) for i in pick]
            record[role] = pick
        if shared:
            extra["adapt"] = list(extra["test"])
        drawn.append(record)
    content = dict(data.content)
    for dd, _ in ood:
        content.update(dd.content)
    opener = data.opener
    for dd, _ in ood:  # array sources open their own rows; every file path goes to open_image
        if isinstance(dd.opener, ArrayImages):
            opener = opener.merged(dd.opener) if isinstance(opener, ArrayImages) else ArrayImages(
                dd.opener.files, opener).merged(dd.opener)
    merged = DomainData(data.dataset, data.domain, data.source, data.location, data.adapt + extra["adapt"],
                        data.test + extra["test"], opener, dict(data.skipped), None, content)
    import json

    ident = {"id": checksum, "composition": comp.describe(), "drawn": drawn}
    return merged, "sha256:" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def without_images(sd: ShiftData, refs: frozenset) -> ShiftData:
    """The shift's splits without the images in ``refs`` (a labeled-source model's training images, when the
    target is the source domain): in-distribution numbers are measured on images the model never trained on."""
    adapt_index = [i for i, j in enumerate(sd.adapt_index) if sd.domain.adapt[j].ref not in refs]
    test_index = [i for i, e in enumerate(sd.domain.test) if e.ref not in refs]
    adapt = [sd.adapt[i] for i in adapt_index]
    test = [sd.test[i] for i in test_index]
    if not test:
        raise DataError(f"dataset '{sd.protocol.name}' domain '{sd.domain.domain}': every test image is a "
                        f"training image of the source; the domain has no held-out images to evaluate on")
    n_out = len(sd.adapt) - len(adapt) + len(sd.test) - len(test)
    return ShiftData(sd.protocol, sd.split, sd.domain, adapt, test, [sd.adapt_index[i] for i in adapt_index],
                     test_index, n_out)




def resolve_dataset(domain: str, dataset: str | None, data_root: str | None,
                    settings: Settings | None = None) -> Protocol:
    """Pick the dataset: the one named, else the only configured dataset that has this domain, else the default
    one (``shapes``) when only built-in worlds share the name (``shapes65`` is asked for by name); a configured
    real dataset beside them makes the name ambiguous."""
    if dataset:
        proto = load_protocol(dataset)
        proto.domain(domain)  # raises with suggestions
        return proto
    settings = settings or settings_mod.load()
    protos = [load_protocol(n) for n in list_datasets()]
    having = [p for p in protos if p.has_domain(domain)]
    if not having:
        all_domains = sorted({d.name for p in protos for d in p.domains})
        raise UeobenchError(f"unknown domain '{domain}'{suggest(domain, all_domains)}")
    configured = [p for p in having if is_available(p, data_root, settings)]
    if len(configured) == 1:
        if len(having) > 1:
            others = ", ".join(p.name for p in having if p is not configured[0])
            warnings.warn(f"domain '{domain}' is also in {others} (no data configured); using dataset "
                          f"'{configured[0].name}'; pass --dataset to pick another", stacklevel=2)
        return configured[0]
    default = [p for p in configured if p.name == DEFAULT_DATASET]
    if len(configured) > 1 and default and all(p.builtin for p in configured):  # never over real data
        others = ", ".join(p.name for p in configured if p is not default[0])
        warnings.warn(f"domain '{domain}' is also in {others}; using the default dataset '{DEFAULT_DATASET}'; "
                      f"pass --dataset to pick another", stacklevel=2)
        return default[0]
    if len(configured) > 1:
        names = ", ".join(p.name for p in configured)
        raise UeobenchError(f"domain '{domain}' is in several configured datasets ({names}); pick one with --dataset")
    names = ", ".join(p.name for p in having)
    raise UeobenchError(f"domain '{domain}' belongs to {names}, whose data is not configured; pass --data-root or --dataset")


# -------------------------------------------------------------------------------------------- fingerprint


def data_fingerprint(domain: DomainData, root: str | None) -> str:
    """Content address of one domain's images (both lists): for every image its path relative to the dataset
    root ``root`` (resolved, so ``a/../a/x.png`` is one image), its label and the SHA-256 of its bytes; for a
    Hugging Face dataset, each row's index and label and the library's fingerprint of each split. Where the data
    lives on this machine does not enter it. Fills ``domain.content`` (each image's content key), which the
    feature cache is keyed by."""
    h = hashlib.sha256(f"source {domain.source}\n".encode())
    base = os.path.realpath(root) if root else None
    hashes = content_hashes()
    for role, entries in (("adapt", domain.adapt), ("test", domain.test)):
        h.update(f"role {role}\n".encode())
        for line in _entry_lines(entries, base, hashes, domain.content):
            h.update(line.encode())
    if domain.content_id:
        h.update(f"content {domain.content_id}\n".encode())
        for role, entries in (("adapt", domain.adapt), ("test", domain.test)):
            for e in entries:
                domain.content[e.ref] = f"{domain.content_id}:{e.ref}"
    return "sha256:" + h.hexdigest()


def _entry_lines(entries: Iterable[Any], base: str | None, hashes: Any, content: dict) -> Iterable[str]:
    for e in entries:
        ref = e.ref
        if isinstance(ref, str) and os.path.isabs(ref):
            # readers give real paths under the real root (lists resolve '..' and symlinks), so a prefix strip
            # is the relative path; anything else falls back to a full resolution
            if base and ref.startswith(base + os.sep):
                rel = ref[len(base) + 1:]
            else:
                ref = os.path.realpath(ref)
                rel = os.path.relpath(ref, base) if base else ref
            if e.ref not in content:
                try:
                    content[e.ref] = "sha256:" + hashes.sha256(ref)
                except OSError:
                    content[e.ref] = "missing"
            yield f"{rel}\t{e.label}\t{content[e.ref]}\n"
        else:
            yield f"{ref}\t{e.label}\n"


# ------------------------------------------------------------------------------------------ resolve once


@dataclass(frozen=True)
class ResolvedData:
    """What planning needs of the data: the protocol, the domain's entries and fingerprint, the shift's labels."""

    protocol: Protocol
    domain: DomainData
    checksum: str
    shift: ShiftData


class DataResolver:
    """``resolve(dataset, domain, shift, data_root)`` for many requests of one command: each (dataset, domain,
    data root) is read and fingerprinted once, each shift applied once; settings are read once."""

    def __init__(self, progress: Any = None, settings: Settings | None = None):
        self.progress = progress
        self.settings = settings or settings_mod.load()
        self._domains: dict[tuple, tuple[DomainData, str]] = {}
        self._shifts: dict[tuple, ShiftData] = {}
        self._sources: dict[tuple, SourceData] = {}

    def protocol(self, dataset: str | None, domain: str, data_root: str | None) -> Protocol:
        """The dataset of a request, without reading any image (so bad options can be refused first)."""
        return resolve_dataset(domain, dataset, data_root, self.settings)

    def _domain(self, proto: Protocol, name: str, data_root: str | None) -> tuple[DomainData, str]:
        key = (proto.name, name, data_root)
        if key not in self._domains:
            dd = load_domain(proto, name, data_root, self.progress, self.settings)
            root = None if dd.source == "hf" else str(dataset_root(proto, data_root, settings=self.settings))
            self._domains[key] = (dd, data_fingerprint(dd, root))
        return self._domains[key]

    def resolve(self, proto: Protocol, domain: str, shift: str, data_root: str | None) -> ResolvedData:
        proto.split(shift)  # raises with suggestions
        name = proto.domain(domain).name
        key = (proto.name, name, data_root)
        comp = proto.composition(shift)
        if comp is None:
            dd, checksum = self._domain(proto, name, data_root)
        else:  # the ID domain with the OOD images mixed in: its own entries and fingerprint
            key = key + (shift,)
            if key not in self._domains:
                dd, checksum = self._domain(proto, name, data_root)
                ood = [self._domain(load_protocol(p.dataset), p.domain, data_root) for p in comp.parts]
                self._domains[key] = compose(proto, comp, dd, checksum, ood)
            dd, checksum = self._domains[key]
        if key + (shift,) not in self._shifts:
            self._shifts[key + (shift,)] = apply_shift(proto, shift, dd)
        return ResolvedData(proto, dd, checksum, self._shifts[key + (shift,)])

    def resolve_source(self, proto: Protocol, source: str, shift: str, data_root: str | None, seed: int,
                       shots: int | None) -> SourceData:
        """The labeled source of a labeled-source run (``ueobench.data.source_split``)."""
        try:
            name = proto.domain(source).name
        except UeobenchError as e:
            raise UeobenchError(f"--source: {e}") from None
        key = ("source", proto.name, name, data_root, shift, seed, shots)
        if key not in self._sources:
            resolved = self.resolve(proto, name, shift, data_root)
            self._sources[key] = split_source(proto, resolved.shift.split, resolved.domain, resolved.checksum,
                                              seed, shots)
        return self._sources[key]
