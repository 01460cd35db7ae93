"""Where data lives: ``--data-root``, then ``$UEOBENCH_DATA``, then ``ueobench.toml`` in the working directory.

``ueobench.toml`` may also hold per-dataset sections that pick a source or override a root::

    data_root = "/data"

    [datasets.officehome]
    root = "/data/OfficeHomeDataset_10072016"   # instead of <data_root>/office-home

    [datasets.domainnet]
    source = "hf"                   # auto (default) | list | folder | hf
    hf_path = "/data/domainnet_hf"  # a saved dataset (load_from_disk), a local folder, or a hub id
    adapt_split = "train"
    test_split = "test"
    image_column = "image"
    label_column = "label"
    domain_column = "domain"        # optional: one dataset holding every domain

The file is parsed and validated once (``load``); every error names the file and the field.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..core.errors import UeobenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILE = "ueobench.toml"
ENV_DATA = "UEOBENCH_DATA"
SOURCES = ("auto", "list", "folder", "hf")
TOP_LEVEL = ("data_root", "datasets")


@dataclass(frozen=True)
class DatasetSettings:
    root: str | None = None
    source: str = "auto"
    hf_path: str | None = None
    hf_name: str | None = None
    adapt_split: str = "train"
    test_split: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    domain_column: str | None = None


@dataclass(frozen=True)
class Settings:
    """The validated contents of ``ueobench.toml`` (empty when there is none)."""

    path: Path | None = None
    data_root: Path | None = None
    datasets: dict[str, DatasetSettings] = field(default_factory=dict)
    checksum: str | None = None  # sha256 of the file's bytes, for the record

    def dataset(self, name: str) -> DatasetSettings:
        return self.datasets.get(name, DatasetSettings())

    def resolve_root(self, cli_value: str | None = None) -> tuple[Path | None, str]:
        """The data root and where it came from (for error messages)."""
        if cli_value:
            return Path(cli_value).expanduser(), "--data-root"
        if os.environ.get(ENV_DATA):
            return Path(os.environ[ENV_DATA]).expanduser(), f"${ENV_DATA}"
        if self.data_root is not None:
            return self.data_root, str(self.path)
        return None, ""


def _dataset_section(path: Path, name: str, section: Any) -> DatasetSettings:
    where = f"{path}: [datasets.{name}]"
    if not isinstance(section, dict):
        raise UeobenchError(f"{where} must be a table")
    known = {f.name for f in fields(DatasetSettings)}
    bad = sorted(set(section) - known)
    if bad:
        raise UeobenchError(f"{where} has unknown key(s) {bad}; allowed: {sorted(known)}")
    for f in fields(DatasetSettings):
        if f.name in section and not isinstance(section[f.name], str):
            raise UeobenchError(f"{where}.{f.name} must be a string, got {type(section[f.name]).__name__}")
    s = DatasetSettings(**section)
    if s.source not in SOURCES:
        raise UeobenchError(f"{where}.source must be one of {', '.join(SOURCES)}")
    return s


def parse(text: str, path: Path) -> Settings:
    import hashlib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UeobenchError(f"{path}: cannot parse ({str(e).splitlines()[0]}); fix the file or remove it") from None
    bad = sorted(set(doc) - set(TOP_LEVEL))
    if bad:
        raise UeobenchError(f"{path}: unknown key(s) {bad}; allowed: {', '.join(TOP_LEVEL)}")
    root = None
    if "data_root" in doc:
        if not isinstance(doc["data_root"], str):
            raise UeobenchError(f"{path}: data_root must be a string path")
        root = Path(doc["data_root"]).expanduser()
        root = root if root.is_absolute() else path.parent / root
    sections = doc.get("datasets", {})
    if not isinstance(sections, dict):
        raise UeobenchError(f"{path}: datasets must be a table of [datasets.NAME] sections, got "
                            f"{type(sections).__name__}")
    datasets = {name: _dataset_section(path, name, s) for name, s in sections.items()}
    return Settings(path, root, datasets, "sha256:" + hashlib.sha256(text.encode()).hexdigest())


_MEMO: dict[tuple[str, bytes], Settings] = {}


def load(cwd: Path | None = None) -> Settings:
    """``ueobench.toml`` of the working directory, validated once per content (planning takes one ``Settings``
    for a whole command and hands it down, instead of looking the file up at every step)."""
    path = (cwd or Path.cwd()) / CONFIG_FILE
    if not path.is_file():
        return Settings()
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except OSError as e:
        raise UeobenchError(f"{path}: cannot read ({e.strerror}); fix the file or remove it") from None
    except UnicodeDecodeError as e:
        raise UeobenchError(f"{path}: cannot parse (not UTF-8: {e.reason} at byte {e.start}); fix the file or "
                            f"remove it") from None
    key = (str(path.resolve()), raw)
    if key not in _MEMO:
        _MEMO.clear()
        _MEMO[key] = parse(text, path)
    return _MEMO[key]
