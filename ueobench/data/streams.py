"""Label-shift streams: the order in which an online or batched method reads the adaptation data.

The harness builds the stream from the labels (a method never sees them), as StatA's samplers do:

- ``iid`` (default): a seeded uniform shuffle, what every online method reads without ``--stream``;
- ``dirichlet:GAMMA[@B]``: StatA's online stream (``OnlineSampler``): ``min(N // B, C)`` slots, each class's
  images (in list order) cut into consecutive pieces by a Dirichlet(GAMMA) draw over the slots, each slot
  shuffled, the slots concatenated; small GAMMA puts each class in few slots (0.1 low, 0.01 medium, 0.001 high
  correlation; B = 128 as its script);
- ``separate``: StatA's γ = -1, classes in a random order, each one's images shuffled and contiguous;
- ``keff:LO-HI[@B]``: StatA's batch protocol as a stream: consecutive batches of B images, each drawn from
  K ~ U{LO..HI} classes (the pooled images of K classes drawn without replacement), until every image is used;
  LO-HI = 1-4 very low, 2-10 low, 5-25 medium at B = 64.

Every stream is drawn from ``numpy.random.default_rng(seed)`` with the run's seed (StatA's own draws are
unseeded), so a stream is reproducible and part of the run's identity.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..core.errors import UeobenchError

HELP = ("iid, dirichlet:GAMMA[@B] (StatA's online stream), separate, or keff:LO-HI[@B] (batches of B images "
        "from LO..HI classes)")


@dataclass(frozen=True)
class Stream:
    kind: str  # iid, dirichlet, separate, keff
    gamma: float | None = None
    lo: int | None = None
    hi: int | None = None
    batch: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.gamma:g}@{self.batch}"
        if self.kind == "keff":
            return f"keff:{self.lo}-{self.hi}@{self.batch}"
        return self.kind


def parse_stream(text: str | None) -> Stream | None:
    """``None``/``iid`` -> None (the default order); anything else a validated ``Stream`` with its defaults."""
    if text is None or text.strip() == "iid":
        return None
    t = text.strip()
    bad = f"bad --stream '{text}'; use {HELP}"
    m = re.fullmatch(r"dirichlet:([0-9.eE+-]+)(?:@(\d+))?", t)
    if m:
        try:
            gamma = float(m.group(1))
        except ValueError:
            raise UeobenchError(bad) from None
        batch = int(m.group(2) or 128)
        if not (gamma > 0 and np.isfinite(gamma)) or batch < 1:
            raise UeobenchError(bad)
        return Stream("dirichlet", gamma=gamma, batch=batch)
    if t == "separate":
        return Stream("separate")
    m = re.fullmatch(r"keff:(\d+)-(\d+)(?:@(\d+))?", t)
    if m:
        lo, hi, batch = int(m.group(1)), int(m.group(2)), int(m.group(3) or 64)
        if not 1 <= lo <= hi or batch < 1:
            raise UeobenchError(bad)
        return Stream("keff", lo=lo, hi=hi, batch=batch)
    raise UeobenchError(bad)


def stream_order(labels: list[int] | np.ndarray, stream: Stream, seed: int) -> list[int]:
    """The positions of the adaptation data in stream order (a permutation of range(len(labels)))."""
    y = np.asarray(labels)
    n = len(y)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    by_class = [np.flatnonzero(y == c) for c in classes]
    if stream.kind == "separate":
        out = []
        for k in rng.permutation(len(classes)):
            out.extend(rng.permutation(by_class[k]).tolist())
        return out
    if stream.kind == "dirichlet":
        slots = max(1, min(n // stream.batch, len(classes)))
        dist = rng.dirichlet([stream.gamma] * slots, len(classes))
        pieces: list[list[int]] = [[] for _ in range(slots)]
        for idx, p in zip(by_class, dist):
            cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
            for s, part in enumerate(np.split(idx, cuts)):
                pieces[s].extend(part.tolist())
        out = []
        for piece in pieces:
            out.extend(rng.permutation(np.array(piece, dtype=int)).tolist())
        return out
    if stream.kind == "keff":
        left = {int(c): list(rng.permutation(idx)) for c, idx in zip(classes, by_class)}
        out = []
        while left:
            k = int(rng.integers(stream.lo, stream.hi + 1))
            have = sorted(left)
            pick = have if k >= len(have) else sorted(rng.choice(have, size=k, replace=False).tolist())
            pool = [i for c in pick for i in left[c]]
            take = rng.permutation(len(pool))[: stream.batch]
            chosen = {pool[j] for j in take}
            out.extend(pool[j] for j in take)
            for c in pick:
                left[c] = [i for i in left[c] if i not in chosen]
                if not left[c]:
                    del left[c]
        return out
    raise UeobenchError(f"unknown stream kind '{stream.kind}'")
