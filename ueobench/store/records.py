"""Run records: one folder per run, written atomically, named by the hash of its plan; and the typed record.

Each run folder (``layout.run_dir``) holds ``record.json`` (schema-versioned: plan, method code, label,
metrics, settings, environment) and ``predictions.npz`` (per-sample cosine logits, scores and labels for both
splits; no pickles).

A run folder is assembled under a temporary name and renamed into place, so a crash never leaves a
half-written record, and a folder that exists is a finished run.

Schema 2 (this version) of ``record.json``; every reader goes through ``RunRecord``:

==================  ======================================================================================
``schema``          2
``run_id``          ``<method>_<dataset>_<shift>_<domain>_s<seed>-<hash12>``; hash12 = sha256 of ``config``
``config``          the run plan (``ueobench.runs.plan.RunPlan``): everything that determines the numbers
``request``         what was asked, including how to execute it (device, workers: not hashed)
``method``          ``name``, ``label`` (the leaderboard row), ``options`` (all, resolved), ``options_changed``
                    (those differing from the method's defaults for the dataset), ``code`` (fingerprint and
                    the hash of every source file), ``oracle``, ``adaptation``, ``selection``, ``info``
``metrics``         ``{split: {metric: value or null}}`` for ``test`` and ``target`` (and ``source_val`` for
                    labeled-source runs)
``source``          labeled-source track: the source domain, its checksum, train/val sizes, shots; null otherwise
``artifact``        labeled-source methods: the trained model evaluated (id, reused, the run that trained it,
                    what was selected and on what); null otherwise
``settings``        what the machine resolved: device, autocast dtype, TF32, loader workers, evaluation path
``history``         one entry per epoch, as ``adapt`` returned it
``protocol``, ``data``, ``backbone``, ``evaluation``, ``timings``, ``environment``: provenance
==================  ======================================================================================

Schema-1 records (ueobench 0.1) are read, migrated on read: they predate method-code fingerprints, so they
count as made by other code and are left out of tables unless asked for (``--code all``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..core.errors import UeobenchError
from ..core.faults import failpoint
from ..core.files import atomic_write_bytes, atomic_write_text, fsync_dir, share_like_the_umask
from ..core.hashing import canonical_json
from ..scoring.scores import DEFAULT_RULE
from .layout import PREDICTIONS, RECORD, code_dir, code_path, failure_path, run_dir, runs_dir

SCHEMA_VERSION = 2
SPLITS = ("test", "target", "source_val")  # source_val: labeled-source runs only


class RecordError(ValueError):
    """A record.json that is not a readable ueobench record; the message names the field."""


@dataclass(frozen=True)
class RunRecord:
    """A finished run as tables, plots, status and the API see it (read from ``record.json``)."""

    run_id: str
    schema: int
    dataset: str
    shift: str
    domain: str
    backbone: str
    seed: int
    method: str
    label: str  # the registered name with the options that differ from the defaults (stable, for filters)
    display_label: str  # how tables and figures show it (the method's display name)
    options: dict[str, Any]
    oracle: bool
    code: dict[str, Any] | None  # None for schema-1 records (no code fingerprint)
    metrics: dict[str, dict[str, float | None]]
    num_known: int | None
    score: str
    rule: str
    history: list[Any]
    path: Path | None
    raw: dict[str, Any]
    #: the labeled-source track: the source domain (None for unlabeled-target runs), the few-shot subsample,
    #: and whether the method read source labels (a zero-shot reference row of the track does not)
    source: str | None = None
    shots: int | None = None
    uses_source_labels: bool = False

    @property
    def code_fingerprint(self) -> str | None:
        return None if self.code is None else self.code.get("fingerprint")


def _field(doc: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise RecordError(f"{where}: missing field '{key}'")
    v = doc[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise RecordError(f"{where}: field '{key}' has the wrong type ({type(v).__name__})")
    return v


def _metrics(doc: Any, where: str) -> dict[str, dict[str, float | None]]:
    if not isinstance(doc, dict):
        raise RecordError(f"{where}: field 'metrics' must be an object of splits")
    out: dict[str, dict[str, float | None]] = {}
    for split, m in doc.items():
        if split not in SPLITS:
            continue
        if not isinstance(m, dict):
            raise RecordError(f"{where}: metrics.{split} must be an object")
        vals: dict[str, float | None] = {}
        for k, v in m.items():
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
                vals[str(k)] = None if v is None else float(v)
        out[split] = vals
    return out


def parse_record(doc: Any, path: Path | None = None) -> RunRecord:
    """Validate and type a record's JSON; schema-1 records are migrated. Raises ``RecordError`` or ``NewerSchema``."""
    where = str(path / RECORD) if path is not None else "record"
    if not isinstance(doc, dict):
        raise RecordError(f"{where}: not a ueobench run record")
    schema = _field(doc, "schema", int, where)
    if schema > SCHEMA_VERSION:
        raise NewerSchema(f"{where} has record schema {schema}, newer than this ueobench ({SCHEMA_VERSION}); "
                          f"upgrade ueobench to read it")
    cfg = _field(doc, "config", dict, where)
    method = doc.get("method") if isinstance(doc.get("method"), dict) else {}
    ev = doc.get("evaluation") if isinstance(doc.get("evaluation"), dict) else {}
    proto = doc.get("protocol") if isinstance(doc.get("protocol"), dict) else {}
    values = {k: _field(cfg, k, str, f"{where} config") for k in ("dataset", "shift", "domain", "backbone", "method")}
    seed = _field(cfg, "seed", int, f"{where} config")
    options = cfg.get("options", {})
    if not isinstance(options, dict):
        raise RecordError(f"{where}: config.options must be an object")
    if schema >= 2:
        label = _field(method, "label", str, f"{where} method")
        code = _field(method, "code", dict, f"{where} method")
    else:  # schema 1: no stored label or code; a label that can never merge two configurations
        digest = hashlib.sha256(canonical_json(options).encode()).hexdigest()[:6]
        label, code = f"{values['method']} [v1 {digest}]", None
    num_known = proto.get("num_known")
    history = doc.get("history", [])
    return RunRecord(
        run_id=_field(doc, "run_id", str, where), schema=schema, seed=seed, label=label, options=options,
        display_label=method["display_label"] if schema >= 2 and isinstance(method.get("display_label"), str) else label,
        oracle=bool(method.get("oracle", False)), code=code, metrics=_metrics(doc.get("metrics"), where),
        num_known=num_known if isinstance(num_known, int) and not isinstance(num_known, bool) else None,
        score=str(ev.get("score", "mcm")), rule=str(ev.get("hscore_rule", DEFAULT_RULE)),
        history=history if isinstance(history, list) else [], path=path, raw=doc, **values,
        source=_optional(cfg, "source", str, where), shots=_optional(cfg, "shots", int, where),
        uses_source_labels=bool(method.get("uses_source_labels", False)),
    )


def _optional(doc: dict[str, Any], key: str, typ: type, where: str) -> Any:
    if doc.get(key) is None:
        return None
    return _field(doc, key, typ, f"{where} config")


MIN_FREE_BYTES = 64 * 2**20


def record_failure(results: str | Path, name: str, exc: BaseException, request: dict[str, Any]) -> Path:
    """``<results>/failed/<run>.json``: the error, its traceback and the request; the run stays not done."""
    import time
    import traceback

    path = failure_path(results, name)
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


def failure_reason(results: str | Path, name: str) -> str:
    """The first line of a failed run's error, for status and logs."""
    try:
        err = json.loads(failure_path(results, name).read_text(encoding="utf-8"))["error"]
    except (OSError, ValueError, KeyError, TypeError):
        return "see its failure record"
    return str(err).strip().splitlines()[0][:300] if str(err).strip() else "see its failure record"


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


def write_run(results: str | Path, name: str, record: dict[str, Any], arrays: dict[str, np.ndarray],
              force: bool = False) -> RunRecord:
    """Write predictions and record into a temp folder, rename it into place atomically, clear the run's failure
    record, and return the record as readers will see it. An existing run is replaced with ``force``, or when
    it is damaged (unreadable: it counts as not done)."""
    try:
        return _write_run(results, name, record, arrays, force)
    except OSError as e:  # the disk filled up or went read-only after the run started: nothing half-written
        raise UeobenchError(f"cannot write run {name} into {runs_dir(results)} ({e.strerror or e}); free space "
                            f"and rerun, or pass --results DIR") from None


def _write_run(results: str | Path, name: str, record: dict[str, Any], arrays: dict[str, np.ndarray],
               force: bool) -> RunRecord:
    root = runs_dir(results)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    share_like_the_umask(tmp, directory=True)
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
        fsync_dir(tmp)
        failpoint("before-rename")
        if final.exists():
            if not force and _readable(final):
                raise UeobenchError(f"run {final} already exists; pass --force to replace it")
            old = root / f".{name}.old-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    failure_path(results, name).unlink(missing_ok=True)
    return read_record(final)


def read_record(folder: Path) -> RunRecord:
    try:
        with open(folder / RECORD, encoding="utf-8") as f:
            doc = json.load(f)
    except UnicodeDecodeError as e:
        raise RecordError(f"{folder / RECORD}: not UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise RecordError(f"{folder / RECORD}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise RecordError(f"{folder / RECORD}: nested too deeply") from None
    return parse_record(doc, folder)


def store_sources(results: str | Path, code: dict[str, Any]) -> None:
    """Keep the source of every file a run's code fingerprint names, by content, so that any stored run's code
    can be read back after it was edited or deleted (files already kept are not written again)."""
    for f in (code.get("files") or {}).values():
        target = code_path(results, f["sha256"])
        if target.is_file():
            continue
        try:
            data = Path(f["file"]).read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() != f["sha256"]:
            continue  # edited since it was fingerprinted: the bytes that ran are not these
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)


def stored_source(results: str | Path, rec: "RunRecord", module: str | None = None) -> tuple[str, str]:
    """(module, source) of a stored run's method module (or of ``module``) as it was when the run was made."""
    files = (rec.code or {}).get("files") or {}
    module = module or rec.raw.get("method", {}).get("module") or next(
        (m for m in files if m.startswith(("ueobench.methods.", "ueobench_plugins."))), None)
    if module not in files:
        raise UeobenchError(f"run {rec.run_id} names no source file for module '{module}' (it has: "
                            f"{', '.join(sorted(files)) or 'none'})")
    path = code_path(results, files[module]["sha256"])
    try:
        return module, path.read_text(encoding="utf-8")
    except OSError:
        raise UeobenchError(f"the source of {module} for run {rec.run_id} is not in {code_dir(results)} (runs made "
                            f"before ueobench 0.3 did not keep it)") from None


def _readable(folder: Path) -> bool:
    try:
        read_record(folder)
    except (OSError, RecordError, NewerSchema):
        return False
    return True


class NewerSchema(UeobenchError):
    """A record written by a newer ueobench."""


def find_record(results: str | Path, name: str) -> RunRecord | None:
    """The finished record of run ``name``, or None when there is none or it is damaged (then it is redone)."""
    folder = run_dir(results, name)
    if not (folder / RECORD).is_file():
        return None
    try:
        return read_record(folder)
    except (OSError, RecordError) as e:
        warnings.warn(f"{e}; the run counts as not done", stacklevel=2)
        return None


def iter_records(results: str | Path, skipped: list[str] | None = None) -> Iterator[RunRecord]:
    """Every finished record; unreadable or foreign files are skipped with a warning naming them (and appended
    to ``skipped`` when given, so callers can say how many they left out)."""
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
            if skipped is not None:
                skipped.append(str(folder))
            continue
        except (OSError, RecordError) as e:
            warnings.warn(f"skipping {folder / RECORD}: not a readable ueobench record ({e})", stacklevel=2)
            if skipped is not None:
                skipped.append(str(folder))
            continue
        yield rec


def load_predictions(folder: str | Path) -> dict[str, np.ndarray]:
    with np.load(Path(folder) / PREDICTIONS, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
