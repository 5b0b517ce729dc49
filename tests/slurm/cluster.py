"""The Slurm cluster that ci/slurm-up starts (single node, or c1..cN each in its own network,
UTS, IPC and mount namespace with its own /dev/shm), as the tests see it: submitting as one
identity, and looking at every node for what a job left behind."""

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import wait_for  # noqa: F401  (the Slurm tests take it from here too)

STATE = Path("/run/chjoin-slurm")
SPOOL_CWD = "/tmp"          # every identity can enter it, on every node
CHJOIN_LOG = "/var/log/slurm/chjoin.log"


class Cluster:
    def __init__(self):
        self.shape = (STATE / "shape").read_text().split()
        self.slurmd = {p.name[len("slurmd-"):-len(".pid")]: int(p.read_text())
                       for p in STATE.glob("slurmd-*.pid")}

    @property
    def nodes(self):
        return sorted(self.slurmd)

    def on_node(self, node, *argv):
        """Run `argv` as root in node `node`'s mount namespace (its own /dev/shm)."""
        return subprocess.run(["nsenter", "-t", str(self.slurmd[node]), "-m", *argv],
                              capture_output=True, text=True, check=True).stdout

    def shm(self):
        """{node: [chjoin's names in its /dev/shm]}."""
        return {node: [n for n in self.on_node(node, "ls", "/dev/shm").split() if "chjoin" in n]
                for node in self.nodes}

    def idle(self, timeout=30):
        """Wait until no job is left in the queue (epilogs included)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
            if not queue.strip():
                return
            time.sleep(0.2)
        pytest.fail(f"jobs still queued after {timeout} s:\n{queue}")


@pytest.fixture(scope="session")
def cluster():
    if not (STATE / "shape").exists():
        pytest.fail("no Slurm cluster is up: run ci/slurm-up (ci/test does)")
    return Cluster()


def needs_nodes(count):
    """Mark a test that needs `count` nodes (ci/test runs them on `ci/slurm-up netns 3`)."""
    return pytest.mark.nodes(count)


def submit(as_user, argv, env=None, timeout=120, **kwargs):
    """Run a Slurm client command (srun, sbatch, salloc, ...) as the identity under test."""
    return subprocess.run(argv, capture_output=True, text=True, env=as_user.env(env),
                          timeout=timeout, cwd=SPOOL_CWD, **as_user.identity_kwargs(), **kwargs)


def processes_of(uid):
    """Live (not zombie) chjoin processes of `uid`: launchers and holders, of the chjoin under
    test ($CHJOIN: other installations' tests may run as the same users on this machine)."""
    mine = os.path.dirname(os.environ.get("CHJOIN", "")) + "/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields["State"].startswith("Z") or int(fields["Uid"].split()[0]) != uid:
            continue
        if mine != "/" and not any(arg.startswith(mine) for arg in argv[:2]):
            continue
        if fields["Name"].strip() == "chjoin-holder" or \
                any(arg.endswith("/chjoin") for arg in argv[:2]):
            found.append(f"{entry} {fields['Name'].strip()} {' '.join(argv)}")
    return found


def log_lines(job_id):
    """What chjoin's prolog and epilog reported for `job_id` (on every node)."""
    try:
        text = Path(CHJOIN_LOG).read_text()
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if f": job {job_id} on " in line]


def sbatch(as_user, script, args=(), env=None):
    """Submit `script` as the identity under test; returns (job id, path of its output)."""
    out_dir = Path(tempfile.mkdtemp(prefix="chjoin-job-", dir="/tmp"))
    out_dir.chmod(0o1777)
    path = out_dir / "job.sh"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    done = submit(as_user, ["sbatch", "--parsable", "-o", str(out_dir / "out"), *args,
                            str(path)], env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0], out_dir / "out"


def wait_job(job_id, timeout=60):
    def ended():
        return not subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True,
                                  text=True).stdout.strip()
    wait_for(ended, timeout, f"job {job_id} to end")


def job_field(job_id, name):
    """One field of `scontrol show job` (values may hold spaces: up to the next field)."""
    text = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                          text=True).stdout
    match = re.search(rf"(?:^| ){name}=(.*?)(?= [A-Za-z:/]+=|$)", text.strip())
    return match.group(1).strip() if match else None
