"""One sweep worker process: ``python -m ueobench.sweeps.worker PLAN [--retry-failed] [--force]`` goes through a
saved plan, claiming each job that is not done or taken. SIGTERM, SIGHUP and SIGINT end it quietly: the run in
flight is left not done (its claim is released by the operating system) and the next sweep redoes it."""
from __future__ import annotations

import signal
import sys

from ..method.plugins import add_plugin_folder
from .jobs import load_sweep
from .launchers import run_local


def worker_main(plan_path: str, retry_failed: bool = False, force: bool = False) -> dict[str, int]:
    spec, jobs, names = load_sweep(plan_path)
    for folder in spec.plugins:
        add_plugin_folder(folder)
    return run_local(jobs, names, retry_failed, force)


def _leave(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _leave)
    try:
        worker_main(sys.argv[1], "--retry-failed" in sys.argv, "--force" in sys.argv)
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
