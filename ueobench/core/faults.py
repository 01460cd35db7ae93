"""Fail points for the fault-injection tests: ``UEOBENCH_FAILPOINT=<name>`` makes the process SIGKILL itself
when it reaches that point, so tests can stop a run at exact moments (mid-training, mid-write) as well as at
random times. Without the variable this is a no-op."""
from __future__ import annotations

import os
import signal


def failpoint(name: str) -> None:
    if os.environ.get("UEOBENCH_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
