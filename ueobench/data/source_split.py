"""The labeled source of the labeled-source track: which source images a method trains on and which it selects on.

The source domain's adaptation list, restricted to the shift's K known classes (labels remapped 0..K-1 as for
the target), is split per class with a generator seeded by the run's seed: ``VAL_FRACTION`` of each class (at
least one image when the class has two or more) is held out as ``source_val``, the only data any selection
(best epoch, thresholds, temperature, C of a linear probe) may read; the rest is ``source_train``. ``--shots
N`` then keeps N images per class of ``source_train`` (all of them when a class has fewer, as Dassl's few-shot
sampler does; the record says how many each class got). The split depends only on the entries' order and
labels and on the seed, never on where the files live.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import DataError
from .protocols import Protocol, Split
from .sources import DomainData

VAL_FRACTION = 0.1
#: recorded in every artifact's identity, so that changing how source_val is drawn changes every artifact id
SOURCE_VAL_RULE = "per class: round(10%) (>= 1 when the class has >= 2 images), numpy default_rng(seed) permutation"


@dataclass(frozen=True)
class SourceData:
    """The labeled source images of one (dataset, source domain, known classes, shots, seed)."""

    protocol: Protocol
    split: Split
    domain: DomainData
    checksum: str  # the source domain's data fingerprint
    train: list[tuple[str | int, int]]
    val: list[tuple[str | int, int]]
    shots: int | None
    per_class_train: tuple[int, ...]  # images per known class in ``train`` (after the few-shot subsample)

    @property
    def known_names(self) -> list[str]:
        return [self.protocol.classes[i] for i in self.split.known]

    @property
    def train_refs(self) -> frozenset:
        return frozenset(r for r, _ in self.train)

    def summary(self) -> dict:
        return {"domain": self.domain.domain, "checksum": self.checksum, "n_train": len(self.train),
                "n_val": len(self.val), "shots": self.shots, "val_rule": SOURCE_VAL_RULE,
                "train_per_class": {"min": min(self.per_class_train), "max": max(self.per_class_train)}}


def split_source(protocol: Protocol, split: Split, domain: DomainData, checksum: str, seed: int,
                 shots: int | None) -> SourceData:
    """Hold out source_val per class, then subsample shots, both seeded by ``seed``."""
    if shots is not None and shots < 1:
        raise DataError(f"--shots {shots}: give a positive number of images per class, or leave it out for all")
    remap = split.label_map()
    known = set(split.known)
    by_class: dict[int, list[str | int]] = {k: [] for k in range(split.num_known)}
    for e in domain.adapt:
        if e.label in known:
            by_class[remap[e.label]].append(e.ref)
    empty = [protocol.classes[split.known[k]] for k, refs in by_class.items() if not refs]
    if empty:
        raise DataError(f"dataset '{protocol.name}' source domain '{domain.domain}' has no images of known "
                        f"class{'es' if len(empty) > 1 else ''} {', '.join(empty[:5])}; pick another --source")
    rng = np.random.default_rng(seed)
    train: list[tuple[str | int, int]] = []
    val: list[tuple[str | int, int]] = []
    counts = []
    for k in range(split.num_known):
        refs = by_class[k]
        order = rng.permutation(len(refs))
        n_val = max(1, round(VAL_FRACTION * len(refs))) if len(refs) >= 2 else 0
        val += [(refs[i], k) for i in sorted(order[:n_val])]
        rest = order[n_val:]
        if shots is not None:
            rest = rest[:shots]
        train += [(refs[i], k) for i in sorted(rest)]
        counts.append(len(rest))
    return SourceData(protocol, split, domain, checksum, train, val, shots, tuple(counts))
