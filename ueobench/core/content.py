"""Content hashes of files, computed once per file version.

Identity is content: a run's data fingerprint, the feature cache's key and a checkpoint's identity are
SHA-256s of the bytes. Hashing every image of a large domain at every command would be slow, so an index
remembers each file's hash under its path and its full ``stat`` (size, modification *and* change time, inode,
device). Any write to a file changes its change time, which no user call can set back, so restoring the
modification time after editing a file does not hide the edit. As git's index does, an entry is only kept
when the file is older than a few seconds, since a write within the clock's granularity could leave the
stat unchanged. Without a writable cache folder, files are hashed every time (correct, only slower).
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from .hashing import file_sha256
from .paths import cache_root

RACY_SECONDS = 3.0  # files changed this recently are hashed but not remembered


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


class ContentHashes:
    """``sha256(path)`` through the on-disk index at ``<cache>/content-index.sqlite``."""

    def __init__(self, db: Path | None = None):
        self.db_path = db or cache_root() / "content-index.sqlite"
        self._db: sqlite3.Connection | None = None
        self._usable = True
        self.hashed = 0  # files read this time, for the record and the tests

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None and self._usable:
            try:
                self.db_path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
                self._db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INT, mtime INT, "
                                 "ctime INT, ino INT, dev INT, sha256 TEXT)")
            except (OSError, sqlite3.Error):
                self._usable, self._db = False, None
        return self._db

    def sha256(self, path: str | os.PathLike[str], st: os.stat_result | None = None) -> str:
        path = os.fspath(path)
        st = st or os.stat(path)
        key = _stat_key(st)
        db = self._connect()
        if db is not None:
            try:
                row = db.execute("SELECT size, mtime, ctime, ino, dev, sha256 FROM files WHERE path = ?",
                                 (path,)).fetchone()
            except sqlite3.Error:
                row = None
            if row is not None and tuple(row[:5]) == key:
                return row[5]
        digest = file_sha256(path)
        self.hashed += 1
        after = os.stat(path)
        settled = time.time() - max(after.st_mtime, after.st_ctime) > RACY_SECONDS
        if db is not None and settled and _stat_key(after) == key:
            try:
                db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", (path, *key, digest))
            except sqlite3.Error:
                pass
        return digest

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


_SHARED: ContentHashes | None = None


def content_hashes() -> ContentHashes:
    """The index of this process (reopened when the cache folder changes, as tests do)."""
    global _SHARED
    db = cache_root() / "content-index.sqlite"
    if _SHARED is None or _SHARED.db_path != db:
        if _SHARED is not None:
            _SHARED.close()
        _SHARED = ContentHashes(db)
    return _SHARED
