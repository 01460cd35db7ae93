"""Progress on stderr: rich bars on a terminal, plain lines in logs (SLURM, nohup, CI), silence for libraries.

Every reporter has the same small interface (``add_task``, ``advance``, ``update`` with optional ``loss``,
``remove_task``, ``log``). With stderr not a terminal, ``PlainProgress`` prints a line when a task starts, every
10% or 30 seconds (done/total, rate, ETA, loss) and when it ends, so a six-minute TPT run is never silent.
``UEOBENCH_NO_PROGRESS=1`` silences everything (tests, sweep workers whose parent reports for them).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Iterator

from .text import printable


class NullProgress:
    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def advance(self, *a: Any, **k: Any) -> None:
        pass

    def update(self, *a: Any, **k: Any) -> None:
        pass

    def remove_task(self, *a: Any, **k: Any) -> None:
        pass

    def log(self, message: str) -> None:
        pass


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class PlainProgress:
    """Line-oriented progress for logs."""

    def __init__(self, stream: Any = None, every_pct: float = 10.0, every_s: float = 30.0):
        self.stream = stream or sys.stderr
        self.every_pct, self.every_s = every_pct, every_s
        self.tasks: dict[int, dict[str, Any]] = {}
        self._next = 1

    def _print(self, text: str) -> None:
        print(printable(text), file=self.stream, flush=True)

    def log(self, message: str) -> None:
        self._print(message)

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        tid = self._next
        self._next += 1
        now = time.monotonic()
        self.tasks[tid] = {"description": description, "total": total or 0, "completed": 0, "start": now,
                           "last_t": now, "last_pct": 0.0, "fields": dict(fields)}
        self._print(f"{description}: started ({int(total or 0)} steps)")
        return tid

    def _line(self, t: dict[str, Any]) -> str:
        elapsed = max(1e-9, time.monotonic() - t["start"])
        done, total = t["completed"], t["total"]
        rate = done / elapsed
        parts = [f"{t['description']}: {100 * done / total:.0f}% ({int(done)}/{int(total)})" if total else
                 f"{t['description']}: {int(done)}", f"{rate:.2f}/s"]
        if total and rate > 0:
            parts.append(f"ETA {_duration((total - done) / rate)}")
        if t["fields"].get("loss") is not None:
            parts.append(f"loss {t['fields']['loss']:.4f}")
        return ", ".join(parts)

    def _maybe_print(self, tid: int) -> None:
        t = self.tasks.get(tid)
        if t is None:
            return
        now = time.monotonic()
        pct = 100 * t["completed"] / t["total"] if t["total"] else 0.0
        if pct >= t["last_pct"] + self.every_pct or now - t["last_t"] >= self.every_s:
            t["last_pct"], t["last_t"] = pct - pct % self.every_pct, now
            self._print(self._line(t))

    def advance(self, tid: int, amount: float = 1, **fields: Any) -> None:
        if tid in self.tasks:
            self.tasks[tid]["completed"] += amount
            self.tasks[tid]["fields"].update(fields)
            self._maybe_print(tid)

    def update(self, tid: int, completed: float | None = None, **fields: Any) -> None:
        if tid in self.tasks:
            if completed is not None:
                self.tasks[tid]["completed"] = completed
            self.tasks[tid]["fields"].update(fields)
            self._maybe_print(tid)

    def remove_task(self, tid: int) -> None:
        t = self.tasks.pop(tid, None)
        if t is not None:
            self._print(f"{t['description']}: finished in {_duration(time.monotonic() - t['start'])}")


@contextlib.contextmanager
def make_progress(existing: Any = None) -> Iterator[Any]:
    """Reuse ``existing``; otherwise rich bars when stderr is a terminal, plain lines when it is not."""
    if existing is not None:
        yield existing
        return
    if os.environ.get("UEOBENCH_NO_PROGRESS"):
        yield NullProgress()
        return
    if not sys.stderr.isatty():
        yield PlainProgress()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[loss_text]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    ) as p:
        yield _RichBars(p)


class _RichBars:
    """rich bars with rate, loss and ETA; ``log`` prints above the bars."""

    def __init__(self, progress: Any):
        self.p = progress

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        return self.p.add_task(printable(description), total=total, rate="", loss_text="")

    def _fields(self, tid: int, fields: dict[str, Any]) -> dict[str, Any]:
        out = {}
        task = self.p._tasks.get(tid)
        if task is not None and task.speed:
            out["rate"] = f"{task.speed:.1f}/s"
        if fields.get("loss") is not None:
            out["loss_text"] = f"loss {fields['loss']:.4f}"
        return out

    def advance(self, tid: int, amount: float = 1, **fields: Any) -> None:
        self.p.update(tid, advance=amount, **self._fields(tid, fields))

    def update(self, tid: int, completed: float | None = None, **fields: Any) -> None:
        self.p.update(tid, completed=completed, **self._fields(tid, fields))

    def remove_task(self, tid: int) -> None:
        self.p.remove_task(tid)

    def log(self, message: str) -> None:
        self.p.console.print(printable(message), markup=False, highlight=False)
