"""One sweep worker process: ``python -m ueobench.sweeps.worker PLAN [--retry-failed] [--force]`` goes through a
saved plan, claiming each job that is not done or taken."""
from __future__ import annotations

import sys

from ..method.plugins import add_plugin_folder
from .jobs import load_sweep
from .launchers import run_local


def worker_main(plan_path: str, retry_failed: bool = False, force: bool = False) -> dict[str, int]:
    spec, jobs, names = load_sweep(plan_path)
    for folder in spec.plugins:
        add_plugin_folder(folder)
    return run_local(jobs, names, retry_failed, force)


if __name__ == "__main__":
    worker_main(sys.argv[1], "--retry-failed" in sys.argv, "--force" in sys.argv)
