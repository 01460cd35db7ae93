"""Run records: one folder per run, written atomically, found again by a content hash of the config.

Layout (see results/README.md)::

    <results>/runs/<method>_<dataset>_<shift>_<domain>_s<seed>-<hash12>/
        record.json       # schema-versioned: config, checksums, metrics, timings, environment
        predictions.npz   # per-sample cosine logits, scores and labels for both splits (no pickles)

A run folder is assembled under a temporary name and renamed into place, so a crash never leaves a
half-written record, and a folder that exists is a finished run.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import UeobenchError
from .faults import failpoint

SCHEMA_VERSION = 1
RECORD = "record.json"
PREDICTIONS = "predictions.npz"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()


def run_name(identity: dict[str, Any]) -> str:
    slug = "_".join(str(identity[k]) for k in ("method", "dataset", "shift", "domain"))
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", slug)
    return f"{slug}_s{identity['seed']}-{config_hash(identity)[:12]}"


def runs_dir(results: str | Path) -> Path:
    return Path(results) / "runs"


MIN_FREE_BYTES = 64 * 2**20


def failed_dir(results: str | Path) -> Path:
    return Path(results) / "failed"


def record_failure(results: str | Path, name: str, exc: BaseException, request: dict[str, Any]) -> Path:
    """``<results>/failed/<run>.json``: the error, its traceback and the request; the run stays not done."""
    import time
    import traceback

    path = failed_dir(results) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "run_id": name,
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "request": request,
        "host": os.uname().nodename,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    return path


def check_writable(results: str | Path) -> None:
    """Fail before any compute when the results folder cannot take a record (read-only, or nearly full)."""
    d = runs_dir(results)
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".probe-") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise UeobenchError(f"results folder {d} is not writable ({e.strerror}); pass --results DIR or free space") from None
    free = shutil.disk_usage(d).free
    if free < MIN_FREE_BYTES:
        raise UeobenchError(f"results folder {d} has only {free // 2**20} MiB free; free space or pass --results DIR")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small file so that readers see the old content or the new, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_run(results: str | Path, name: str, record: dict[str, Any], arrays: dict[str, np.ndarray], force: bool = False) -> Path:
    """Write predictions and record into a temp folder, then rename it into place atomically."""
    root = runs_dir(results)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        with open(tmp / PREDICTIONS, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        failpoint("between-predictions-and-record")
        with open(tmp / RECORD, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, sort_keys=True, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        failpoint("before-rename")
        if final.exists():
            if not force:
                raise UeobenchError(f"run {final} already exists; pass --force to replace it")
            old = root / f".{name}.old-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_record(folder: Path) -> dict[str, Any]:
    with open(folder / RECORD, encoding="utf-8") as f:
        rec = json.load(f)
    if not isinstance(rec, dict) or "schema" not in rec or "config" not in rec:
        raise ValueError("not a ueobench run record")
    if rec["schema"] > SCHEMA_VERSION:
        raise NewerSchema(
            f"{folder / RECORD} has record schema {rec['schema']}, newer than this ueobench ({SCHEMA_VERSION}); "
            f"upgrade ueobench to read it"
        )
    return rec


class NewerSchema(UeobenchError):
    """A record written by a newer ueobench."""


def find_record(results: str | Path, name: str) -> dict[str, Any] | None:
    folder = runs_dir(results) / name
    if not (folder / RECORD).is_file():
        return None
    return read_record(folder)


def iter_records(results: str | Path) -> Iterator[dict[str, Any]]:
    """Every finished record; unreadable or foreign files are skipped with a warning naming them."""
    root = runs_dir(results)
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        try:
            rec = read_record(folder)
        except NewerSchema as e:
            warnings.warn(f"{e}; skipping it", stacklevel=2)
            continue
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(f"skipping {folder / RECORD}: not a readable ueobench record ({e})", stacklevel=2)
            continue
        rec["_path"] = str(folder)
        yield rec


def load_predictions(folder: str | Path) -> dict[str, np.ndarray]:
    with np.load(Path(folder) / PREDICTIONS, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
