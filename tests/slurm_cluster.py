"""A throw-away single-node SLURM on localhost for the tests: munge with a key of its own, slurmctld and slurmd
with their state, spool, logs and sockets in a temporary folder. Every daemon it starts is stopped by PID."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def missing() -> str | None:
    """Why a cluster cannot be started here (a tool is missing, or we are not root), or None."""
    absent = [t for t in NEEDED if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} missing; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "a throw-away SLURM needs root here (slurmd starts jobs as their user)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@contextlib.contextmanager
def cluster(folder: Path) -> Iterator[dict[str, str]]:
    """Start munge, slurmctld and slurmd; yield the environment (SLURM_CONF, munge socket) that clients need."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "munge", "log"):
        (folder / sub).mkdir(exist_ok=True)
    os.chmod(folder / "munge", 0o700)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    sock = folder / "munge" / "munge.socket"
    host = socket.gethostname()
    cpus = os.cpu_count() or 1
    conf = folder / "slurm.conf"
    conf.write_text(f"""ClusterName=ueobench-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={folder / 'state'}
SlurmdSpoolDir={folder / 'spool'}
SlurmctldPidFile={folder / 'slurmctld.pid'}
SlurmdPidFile={folder / 'slurmd.pid'}
SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}
SlurmdLogFile={folder / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pids: list[int] = []
    try:
        subprocess.run([_exe("munged"), "--force", f"--key-file={key}", f"--socket={sock}",
                        f"--pid-file={folder / 'munge' / 'munged.pid'}", f"--log-file={folder / 'log' / 'munged.log'}",
                        f"--seed-file={folder / 'munge' / 'munged.seed'}"], check=True, env=env, timeout=30)
        pids.append(_wait_pid(folder / "munge" / "munged.pid"))
        subprocess.run([_exe("slurmctld"), "-f", str(conf)], check=True, env=env, timeout=30)
        pids.append(_wait_pid(folder / "slurmctld.pid"))
        subprocess.run([_exe("slurmd"), "-f", str(conf)], check=True, env=env, timeout=30)
        pids.append(_wait_pid(folder / "slurmd.pid"))
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout
            if out.strip() in ("idle", "mix", "alloc"):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the SLURM node never came up: {out!r}; see {folder / 'log'}")
        yield {"SLURM_CONF": str(conf)}
    finally:
        for pid in reversed(pids):  # ours only, by PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in pids:
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _wait_pid(path: Path, timeout: float = 30) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            time.sleep(0.1)
    raise RuntimeError(f"no PID file {path}: the daemon did not start")
