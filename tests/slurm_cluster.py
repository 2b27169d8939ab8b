"""A real single-node SLURM on localhost for the cluster test: Debian's slurm-wlm and munge, installed when
missing (apt-get, needs root), configured in a temporary directory, daemons started and stopped by pid file.

    with local_slurm(tmp_path) as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env, check=False)

No accounting database: jobs are followed with squeue (the profile's `slurm-status-command`), and
`MinJobAge` keeps finished jobs visible to scontrol for the harness's own checks.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
PARTITION = "featint"


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be installed or started on this machine."""


@dataclass
class LocalSlurm:
    root: Path
    partition: str
    env: dict[str, str]

    def accounting(self) -> list[str]:
        """Lines 'jobid|name|state' of every job slurmctld still knows (MinJobAge keeps finished ones)."""
        out = subprocess.run(["scontrol", "show", "job", "--oneliner"], env=self.env, capture_output=True, text=True,
                             check=False)
        lines = []
        for line in out.stdout.splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if "JobId" in fields:
                lines.append(f"{fields['JobId']}|{fields.get('JobName', '')}|{fields.get('JobState', '')}")
        return lines


def ensure_installed() -> None:
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterUnavailable("slurm-wlm / munge are not installed and apt-get cannot run as root here")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    update = subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, check=False)
    install = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], env=env,
                             capture_output=True, text=True, check=False)
    if install.returncode != 0:
        raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed:\n{update.stderr}\n{install.stderr}")


def _memory_mb() -> int:
    with open("/proc/meminfo") as handle:
        total_kb = int(next(line for line in handle if line.startswith("MemTotal")).split()[1])
    return int(total_kb / 1024 * 0.8)


def _write_config(root: Path, host: str) -> Path:
    for name in ("state", "spool", "log", "run"):
        (root / name).mkdir(parents=True, exist_ok=True)
    cpus = len(os.sched_getaffinity(0))
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=featint
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=86400
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPort=16817
SlurmdPort=16818
NodeName={host} CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _start_munge(root: Path) -> Path:
    key = Path("/etc/munge/munge.key")
    if not key.is_file():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    for directory in (Path("/run/munge"), Path("/var/log/munge"), Path("/var/lib/munge")):
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "munge", "munge")
    pid_file = Path("/run/munge/munged.pid")
    if pid_file.is_file():
        try:
            os.kill(int(pid_file.read_text().strip()), 0)
            return pid_file  # already running (e.g. a previous test in this session)
        except (ProcessLookupError, ValueError):
            pid_file.unlink()
    subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force"], check=True, capture_output=True)
    return pid_file


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


@contextmanager
def local_slurm(root: Path) -> Iterator[LocalSlurm]:
    """Install (if needed), configure and start slurmctld + slurmd on localhost; stop them afterwards."""
    ensure_installed()
    host = socket.gethostname().split(".")[0]
    conf = _write_config(root, host)
    env = dict(os.environ, SLURM_CONF=str(conf))
    # srun inside a job step looks for the config at its default path (SLURM_CONF does not reach it): link ours
    # there unless a real configuration is present, and remove the link afterwards.
    default_conf = Path("/etc/slurm/slurm.conf")
    linked = False
    if default_conf.is_symlink() and not default_conf.exists():
        default_conf.unlink()
    if not default_conf.exists():
        default_conf.parent.mkdir(parents=True, exist_ok=True)
        default_conf.symlink_to(conf)
        linked = True
    elif default_conf.resolve() != conf.resolve():
        raise ClusterUnavailable(f"{default_conf} already configures another cluster; not touching it")
    munge_pid = _start_munge(root)
    started: list[Path] = []
    try:
        for daemon, pid_name in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            subprocess.run([daemon, "-f", str(conf)], env=env, check=True, capture_output=True)
            started.append(root / "run" / pid_name)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True,
                                   check=False).stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                break
            time.sleep(1)
        else:
            log_text = (root / "log" / "slurmctld.log").read_text() if (root / "log" / "slurmctld.log").exists() else ""
            raise ClusterUnavailable(f"the SLURM node did not become idle (sinfo: {state!r})\n{log_text[-2000:]}")
        yield LocalSlurm(root, PARTITION, env)
    finally:
        subprocess.run(["scancel", "--partition", PARTITION], env=env, capture_output=True, check=False)
        for pid_file in reversed(started):
            _stop(pid_file)
        _stop(munge_pid)
        if linked:
            default_conf.unlink(missing_ok=True)
