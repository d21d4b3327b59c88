"""A real one-node SLURM for the tests: munged, slurmctld and slurmd started as root, stopped after.

Debian's ``slurm-wlm`` and ``munge`` packages are installed with apt when
missing. Everything the daemons write (config, munge key and socket, state,
spool, logs, pid files) lives in one private directory, on ports picked
free, so the machine's own ``/etc/slurm`` and ``/etc/munge`` are neither read
nor touched and two test sessions never meet. Clients (``sbatch``,
``squeue``, dask-jobqueue) find it through ``SLURM_CONF``.

Choices that matter on a VM or container (Slurm 22.05):

* ``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none``, and no
  ``cgroup.conf``: the cgroup plugins fail to initialise without a
  delegated cgroup tree and slurmd then refuses to start;
* ``SlurmctldHost=<name>(127.0.0.1)`` and ``NodeAddr=127.0.0.1``: a host
  name that does not resolve (common in containers) breaks every RPC
  otherwise; ``slurmd -N <name>`` so the node never depends on ``hostname``;
* ``SlurmdParameters=config_overrides``: the node is declared with at least
  two CPUs (two single-core jobs at once) whatever the hardware, and slurmd
  does not drain it for a mismatch;
* a ``gpu`` GRES whose ``File=`` entries are links to ``/dev/null``,
  ``/dev/zero``, ... standing in for ``/dev/nvidiaN`` (slurmd ignores a
  file that is not a character device), so that a
  ``--gres=gpu:2`` job is scheduled and given ``CUDA_VISIBLE_DEVICES`` on a
  machine without a GPU. A count-only GRES (``Count=2``, no ``File=``, or
  no ``gres.conf``) does not work: slurmd reports 0 GPUs and the node is
  drained ("gres/gpu count reported lower than configured");
* ``AuthInfo=socket=...`` points Slurm at the private munged.

Run ``python tests/_slurm.py`` (as root) to bring it up by hand and print
how to use it; Ctrl-C stops it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
ENV_SWITCH = "PATCHWORKS_TEST_SLURM"  # "0": skip; "1": a failed apt install is an error, not a skip
HOW_TO_RUN = (f"run the suite as root on Debian/Ubuntu (it installs {' and '.join(PACKAGES)} with apt), e.g. "
              f"`sudo .venv/bin/python -m pytest -m slurm`, or as CI does, `.ci/run`")
_MARK = "PATCHWORKS_SLURM_FIXTURE"  # in the daemons' environment only: finds their leftovers by it


def why_not() -> str | None:
    """Why the SLURM tests cannot run here, or None when they can."""
    if os.environ.get(ENV_SWITCH) == "0":
        return f"{ENV_SWITCH}=0"
    if os.name != "posix" or os.geteuid() != 0:
        return "not running as root"
    if not _debian_like():
        return "not a Debian-like system"
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing and shutil.which("apt-get") is None:
        return f"{', '.join(missing)} not installed and no apt-get to install them"
    return None


def _debian_like() -> bool:
    if Path("/etc/debian_version").exists():
        return True
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return False
    ids = " ".join(re.findall(r"^ID(?:_LIKE)?=\"?([^\"\n]*)", text, re.M))
    return "debian" in ids.split()


def install(log) -> float:
    """apt-get the packages when a daemon is missing; seconds spent (0 when already there)."""
    if all(shutil.which(d) for d in DAEMONS):
        return 0.0
    t0 = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120", *PACKAGES]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:  # a fresh image has no package lists yet
        subprocess.run(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=120"], env=env,
                       capture_output=True, text=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr)
    if done.returncode or not all(shutil.which(d) for d in DAEMONS):
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return time.monotonic() - t0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware() -> dict:
    """What ``slurmd -C`` reports for this machine (CPUs, RealMemory, ...)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0]
    return dict(item.split("=", 1) for item in first.split() if "=" in item)


@dataclass
class LocalSlurm:
    """One node running slurmctld + slurmd (+ its own munged), all as root, under ``root``."""

    root: Path
    partition: str = "debug"
    gpus: int = 2  # stand-in GPUs, for scheduling --gres=gpu:N jobs on a machine without any
    node: str = field(default_factory=lambda: re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])
                      or "localhost")
    procs: dict = field(default_factory=dict)
    cpus: int = 0
    memory_mb: int = 0
    startup_s: float = 0.0

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def job_memory(self, jobs: int = 3) -> str:
        """Memory per job such that ``jobs`` jobs fit the node at once (at most 2 GB: workers stay small)."""
        return f"{max(1, min(2000, self.memory_mb // jobs))}MB"

    # -- configuration ---------------------------------------------------------------------
    def write_config(self) -> None:
        for sub in ("state", "spool", "munge", "logs", "dev"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        hw = _node_hardware()
        self.cpus = max(2, int(hw.get("CPUs", 1)))
        total = int(hw.get("RealMemory", 1024))
        # leave room for the OS and the test process itself; slurmd drains a node that promises more than it has
        self.memory_mb = max(512, total - max(512, total // 10))
        ctld_port, d_port = _free_port(), _free_port()
        r = self.root
        self.conf.write_text(f"""\
ClusterName=patchworks
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge/munge.socket
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/logs/slurmctld.log
SlurmdLogFile={r}/logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
KillWait=5
MinJobAge=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        # stand-ins for /dev/nvidiaN: slurmd wants character devices, and /dev/null, /dev/zero, ... are
        # harmless ones (without the cgroup device constraint nothing opens them)
        for i, dev in zip(range(self.gpus), ("null", "zero", "full", "random", "urandom")):
            (self.root / "dev" / f"gpu{i}").symlink_to(f"/dev/{dev}")
        (self.root / "gres.conf").write_text(
            f"NodeName={self.node} Name=gpu File={self.root}/dev/gpu[0-{self.gpus - 1}]\n")

    # -- daemons -----------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / "logs" / f"{name}.out", "ab")
        env = dict(self.env, **{_MARK: str(self.root)})
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        log.close()

    def start(self, timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        reap_orphans()
        self.write_config()
        (self.root / "owner.pid").write_text(str(os.getpid()))
        m = self.root / "munge"
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={m}/munge.socket",
                               f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
                               f"--log-file={self.root}/logs/munged.log", f"--seed-file={m}/munged.seed"])
        self._wait(lambda: (m / "munge.socket").exists(), "munged to open its socket", timeout)
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-i", "-f", str(self.conf)])
        self._wait(lambda: "UP" in self._run("scontrol", "ping").stdout, "slurmctld to answer `scontrol ping`",
                   timeout)
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.conf)])
        self._wait(lambda: self.node_state() == "idle", f"node {self.node} to be idle in `sinfo`", timeout)
        self.startup_s = time.monotonic() - t0
        return self.startup_s

    def _run(self, *args, check=False) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, env=self.env, check=check, timeout=30)

    def _wait(self, ready, what: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")

    def logs(self, tail: int = 1500) -> str:
        parts = []
        for path in sorted((self.root / "logs").glob("*")):
            text = path.read_text(errors="replace")[-tail:]
            parts.append(f"--- {path.name}\n{text}")
        return "\n".join(parts)

    # -- queries used by the tests -----------------------------------------------------------
    def node_state(self) -> str:
        out = self._run("sinfo", "-h", "-N", "-o", "%t").stdout.split()
        return out[0] if out else ""

    def jobs(self, states: str = "PENDING,RUNNING,CONFIGURING,COMPLETING") -> dict[str, str]:
        """Job id -> state, of this cluster's jobs in ``states``."""
        out = self._run("squeue", "-h", "-t", states, "-o", "%i %T").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def running(self) -> list[str]:
        return sorted(j for j, s in self.jobs().items() if s == "RUNNING")

    def sbatch(self, command: str, *, output, cores: int = 1, memory: str = "500MB", walltime="00:10:00") -> str:
        """Submit ``command`` as a batch job; its id."""
        mem = memory.upper().removesuffix("B")  # dask's "2000MB" -> sbatch's "2000M"
        done = self._run("sbatch", "--parsable", "-c", str(cores), f"--mem={mem}", "-t", walltime,
                         "-o", str(output), "--wrap", command, check=True)
        return done.stdout.strip().split(";")[0]

    def scancel(self, *job_ids: str) -> None:
        if job_ids:
            self._run("scancel", *job_ids, check=True)

    def wait_no_jobs(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while self.jobs() and time.monotonic() < end:
            time.sleep(0.3)
        if self.jobs():
            raise RuntimeError(f"jobs still queued after {timeout:.0f} s: {self.jobs()}")

    # -- teardown ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job, stop the daemons, then end any step daemon they left behind."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self.scancel(*self.jobs())
                self.wait_no_jobs(timeout=30)
            except (RuntimeError, subprocess.SubprocessError):
                pass
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self.procs.clear()
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def leftovers(self) -> list[int]:
        """Processes still carrying this cluster's mark (slurmstepd and what it started)."""
        return _marked().get(str(self.root), [])


def _marked() -> dict[str, list[int]]:
    """Root directory -> pids of the processes a LocalSlurm started there (found by their mark)."""
    found: dict[str, list[int]] = {}
    prefix = f"{_MARK}=".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        for item in environ.split(b"\0"):
            if item.startswith(prefix):
                found.setdefault(item[len(prefix):].decode(errors="replace"), []).append(int(entry.name))
    return found


def reap_orphans() -> None:
    """Stop the daemons of an earlier session that was killed before its teardown (SIGKILL, SIGTERM)."""
    for root, pids in _marked().items():
        try:
            owner = int(Path(root, "owner.pid").read_text())
            os.kill(owner, 0)
            continue  # its session is alive (maybe a parallel one): not ours to stop
        except (OSError, ValueError):
            pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    import tempfile

    if why_not():
        raise SystemExit(f"cannot start SLURM here: {why_not()}; {HOW_TO_RUN}")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))  # stop cleanly on kill
    root = Path(tempfile.mkdtemp(prefix="slurm-"))
    print(f"installed in {install(root / 'apt.log'):.1f} s")
    cluster = LocalSlurm(root)
    try:
        print(f"SLURM up in {cluster.start():.1f} s: export SLURM_CONF={cluster.conf}; Ctrl-C stops it")
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
