"""Rich progress bars on stderr, or a silent stand-in for library use and tests."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator


class NullProgress:
    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def advance(self, *a: Any, **k: Any) -> None:
        pass

    def update(self, *a: Any, **k: Any) -> None:
        pass

    def remove_task(self, *a: Any, **k: Any) -> None:
        pass


@contextlib.contextmanager
def make_progress(existing: Any = None) -> Iterator[Any]:
    """Reuse ``existing``; otherwise show rich bars when stderr is a terminal."""
    if existing is not None:
        yield existing
        return
    if not sys.stderr.isatty() or os.environ.get("UEOBENCH_NO_PROGRESS"):
        yield NullProgress()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as p:
        yield p
