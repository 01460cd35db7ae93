"""Claims: a run executes only under an exclusive lock on ``<results>/claims/<run>.lock`` (the ``filelock``
package), which the operating system releases when the holder dies, even by SIGKILL. A run's state follows:

- *done* when its run folder holds a readable record (a damaged one counts as not done and is redone);
- *running* while some process holds its claim;
- *failed* when its failure record exists (and it is not done);
- *pending* otherwise.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from ..core.errors import UeobenchError

from .layout import claim_path, failure_path
from .records import RunRecord, check_writable, find_record

STATES = ("done", "running", "failed", "pending")
__all__ = ["STATES", "Timeout", "claim_or_reuse", "grid_status", "is_running", "state"]


def _safe_claim(results: str | Path, name: str) -> Path:
    """The claim file of a run; a link there is refused (locking opens the file for writing: it would write to
    whatever the link points at)."""
    path = claim_path(results, name)
    if path.is_symlink():
        raise UeobenchError(f"claim {path} is a symbolic link; ueobench never writes through one: remove it")
    return path


def is_running(results: str | Path, name: str) -> bool:
    lock_path = _safe_claim(results, name)
    if not lock_path.exists():
        return False
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def state(results: str | Path, name: str) -> str:
    if find_record(results, name) is not None:  # a damaged record is reported and counts as not done
        return "done"
    if is_running(results, name):
        return "running"
    if failure_path(results, name).is_file():
        return "failed"
    return "pending"


def grid_status(results: str | Path, names: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for n in names:
        counts[state(results, n)] += 1
    return counts


@contextlib.contextmanager
def claim_or_reuse(results: str | Path, name: str, force: bool = False, wait: bool = True,
                   before_claim: Callable[[], None] | None = None) -> Iterator[RunRecord | None]:
    """Yield the finished record of run ``name`` when there is one (and not ``force``); otherwise hold the run's
    claim and yield None: the caller executes and writes the run inside the ``with`` block.

    A finished record is reused without writing anything (a read-only store can still answer); before claiming,
    ``before_claim`` checks that this machine can run it, and the store must take a record. An identical run
    that finished while we waited for its claim is reused too. ``wait=False`` raises ``Timeout`` when another
    process holds the claim."""
    if not force:
        existing = find_record(results, name)
        if existing is not None:
            yield existing
            return
    if before_claim is not None:
        before_claim()
    check_writable(results)
    lock_file = _safe_claim(results, name)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    if lock_file.parent.is_symlink():
        raise UeobenchError(f"claims folder {lock_file.parent} is a symbolic link; remove it")
    with FileLock(str(lock_file), timeout=-1 if wait else 0):
        existing = None if force else find_record(results, name)
        yield existing
