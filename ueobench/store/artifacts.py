"""Trained models of the labeled-source track: one folder per artifact, content-addressed like a run.

``<results>/artifacts/<artifact id>/`` holds ``state.safetensors`` (the tensors the method's
``artifact_state`` returned; no pickles) and ``artifact.json``: the artifact plan (what determines the model:
method, options, code, source data, known classes, shots, seed, backbone weights), the training history, what
was selected and on what, the method's facts, the SHA-256 of the state file, timings, environment and the run
that trained it. Every evaluation run names the artifact it loaded, so a leaderboard cell can be traced to one
trained model.

Like a run folder, an artifact folder is assembled under a temporary name and renamed into place; training
happens under an exclusive claim (``claims/<artifact id>.artifact.lock``), so evaluations of one model on many
targets started at once train it once. A damaged artifact (unreadable JSON, a state file whose hash is not the
recorded one) counts as absent and is trained again.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

from ..core.errors import UeobenchError
from ..core.files import fsync_dir, share_like_the_umask
from .layout import artifact_dir, artifacts_dir, claims_dir

ARTIFACT = "artifact.json"
STATE = "state.safetensors"
ARTIFACT_SCHEMA = 1


@dataclass(frozen=True)
class Artifact:
    artifact_id: str
    meta: dict[str, Any]
    path: Path

    def load_state(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        return load_file(str(self.path / STATE))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_artifact(results: str | Path, artifact_id: str) -> Artifact | None:
    """The stored artifact, or None when there is none or it is damaged (then it is trained again)."""
    folder = artifact_dir(results, artifact_id)
    if not (folder / ARTIFACT).is_file():
        return None
    try:
        meta = json.loads((folder / ARTIFACT).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("artifact_id") != artifact_id:
            raise ValueError("names another artifact")
        if meta.get("schema", 0) > ARTIFACT_SCHEMA:
            raise UeobenchError(f"{folder / ARTIFACT} was written by a newer ueobench; upgrade to read it")
        if _sha256(folder / STATE) != meta.get("state_sha256"):
            raise ValueError(f"{STATE} does not have the recorded SHA-256")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        warnings.warn(f"artifact {folder} is damaged ({e}); it will be trained again", stacklevel=2)
        return None
    return Artifact(artifact_id, meta, folder)


def write_artifact(results: str | Path, artifact_id: str, meta: dict[str, Any], state: dict[str, Any]) -> Artifact:
    """Write state and metadata into a temporary folder and rename it into place (replacing a damaged one)."""
    from safetensors.torch import save_file

    root = artifacts_dir(results)
    root.mkdir(parents=True, exist_ok=True)
    final = root / artifact_id
    tmp = Path(tempfile.mkdtemp(prefix=f".{artifact_id}.tmp-", dir=root))
    share_like_the_umask(tmp, directory=True)
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, str(tmp / STATE))
        doc = {**meta, "schema": ARTIFACT_SCHEMA, "artifact_id": artifact_id, "state_sha256": _sha256(tmp / STATE),
               "state_tensors": len(tensors), "state_numel": int(sum(t.numel() for t in tensors.values()))}
        with open(tmp / ARTIFACT, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=True, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if final.exists():
            old = root / f".{artifact_id}.old-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_dir(root)
    except OSError as e:
        raise UeobenchError(f"cannot write artifact {artifact_id} into {root} ({e.strerror or e}); free space and "
                            f"rerun, or pass --results DIR") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    found = find_artifact(results, artifact_id)
    if found is None:
        raise UeobenchError(f"artifact {artifact_id} could not be read back after writing it")
    return found


@contextlib.contextmanager
def claim_artifact(results: str | Path, artifact_id: str) -> Iterator[Artifact | None]:
    """Yield the stored artifact, or hold its training claim and yield None (the caller trains and writes it)."""
    existing = find_artifact(results, artifact_id)
    if existing is not None:
        yield existing
        return
    lock = claims_dir(results) / f"{artifact_id}.artifact.lock"
    if lock.is_symlink():
        raise UeobenchError(f"claim {lock} is a symbolic link; ueobench never writes through one: remove it")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        yield find_artifact(results, artifact_id)  # trained by someone else while we waited


def iter_artifacts(results: str | Path) -> Iterator[Artifact]:
    root = artifacts_dir(results)
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        art = find_artifact(results, folder.name)
        if art is not None:
            yield art
