"""The results folder, in one place (see results/README.md)::

    <results>/runs/<run id>/record.json, predictions.npz   finished runs (one folder each, renamed into place)
    <results>/failed/<run id>.json                          failure records (error, traceback, request)
    <results>/claims/<run id>.lock                          claims: an exclusive lock while a run executes
    <results>/sweeps/<key>.json                             saved sweep plans (what ``status`` reports)
    <results>/submitit/<job id>/                            submitit's job folders (SLURM logs)
    <results>/artifacts/<artifact id>/artifact.json,        trained models of the labeled-source track (what
                                     state.safetensors      every evaluation of one model loads)
    <results>/code/<sha256>.py                              the source of every file a stored run's code ran,
                                                            by content (read back with show run ID --code)
"""
from __future__ import annotations

from pathlib import Path

RECORD = "record.json"
PREDICTIONS = "predictions.npz"


def runs_dir(results: str | Path) -> Path:
    return Path(results) / "runs"


def run_dir(results: str | Path, run_id: str) -> Path:
    return runs_dir(results) / run_id


def failed_dir(results: str | Path) -> Path:
    return Path(results) / "failed"


def failure_path(results: str | Path, run_id: str) -> Path:
    return failed_dir(results) / f"{run_id}.json"


def claims_dir(results: str | Path) -> Path:
    return Path(results) / "claims"


def claim_path(results: str | Path, run_id: str) -> Path:
    return claims_dir(results) / f"{run_id}.lock"


def sweeps_dir(results: str | Path) -> Path:
    return Path(results) / "sweeps"


def sweep_path(results: str | Path, key: str) -> Path:
    return sweeps_dir(results) / f"{key}.json"


def submitit_dir(results: str | Path) -> Path:
    return Path(results) / "submitit"


def code_dir(results: str | Path) -> Path:
    return Path(results) / "code"


def code_path(results: str | Path, sha256: str) -> Path:
    return code_dir(results) / f"{sha256}.py"


def artifacts_dir(results: str | Path) -> Path:
    return Path(results) / "artifacts"


def artifact_dir(results: str | Path, artifact_id: str) -> Path:
    return artifacts_dir(results) / artifact_id
