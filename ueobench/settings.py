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
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import UeobenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILE = "ueobench.toml"
ENV_DATA = "UEOBENCH_DATA"


@dataclass
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


SOURCES = ("auto", "list", "folder", "hf")


def read_config(cwd: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    path = (cwd or Path.cwd()) / CONFIG_FILE
    if not path.is_file():
        return {}, None
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), path
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as e:
        raise UeobenchError(f"{path}: cannot parse ({str(e).splitlines()[0]}); fix the file or remove it") from None


def data_root(cli_value: str | None = None) -> tuple[Path | None, str]:
    """The data root and where it came from (for error messages)."""
    if cli_value:
        return Path(cli_value).expanduser(), "--data-root"
    if os.environ.get(ENV_DATA):
        return Path(os.environ[ENV_DATA]).expanduser(), f"${ENV_DATA}"
    cfg, path = read_config()
    if "data_root" in cfg:
        if not isinstance(cfg["data_root"], str):
            raise UeobenchError(f"{path}: data_root must be a string path")
        root = Path(cfg["data_root"]).expanduser()
        return (root if root.is_absolute() else path.parent / root), str(path)  # type: ignore[union-attr]
    return None, ""


def dataset_settings(dataset: str) -> DatasetSettings:
    cfg, path = read_config()
    section = cfg.get("datasets", {}).get(dataset, {})
    if not isinstance(section, dict):
        raise UeobenchError(f"{path}: [datasets.{dataset}] must be a table")
    known = {f.name for f in fields(DatasetSettings)}
    bad = sorted(set(section) - known)
    if bad:
        raise UeobenchError(f"{path}: [datasets.{dataset}] has unknown key(s) {bad}; allowed: {sorted(known)}")
    for f in fields(DatasetSettings):
        if f.name in section and not isinstance(section[f.name], str):
            raise UeobenchError(f"{path}: [datasets.{dataset}].{f.name} must be a string, got "
                                f"{type(section[f.name]).__name__}")
    s = DatasetSettings(**section)
    if s.source not in SOURCES:
        raise UeobenchError(f"{path}: [datasets.{dataset}].source must be one of {', '.join(SOURCES)}")
    return s
