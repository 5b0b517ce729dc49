"""slurm/prolog and slurm/epilog, as ci/slurm-up configures them (Prolog=, Epilog=,
PrologFlags=Alloc): what they check, stage, remove and report, in the real cluster."""

import os
import shutil
import subprocess
import sys

import pytest

from cluster import (CHJOIN_LOG, cluster, job_field, log_lines, processes_of,  # noqa: F401
                     sbatch, wait_for, wait_job)
from conftest import world_readable_dir


def of_job(pid, job_id):
    """Whether process `pid` was started within job `job_id` (other tests' holders of the same
    user may be running on this machine)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"\0SLURM_JOB_ID={job_id}\0".encode() in b"\0" + f.read()
    except OSError:
        return False


def test_epilog_removes_what_a_killed_job_left(cluster, as_user, image):
    """The job's holder is stuck (stopped), so nothing of chjoin's own cleans up when the job's
    ranks are SIGKILLed. The ranks start through `setsid` (as some wrappers do), so Slurm's
    kill of the step's process groups misses the holder too (and the ranks' commands, which
    end by themselves): the epilog kills it and removes the group's names."""
    job_id, _out = sbatch(as_user, f"srun -n2 setsid -w {as_user.chjoin} --join-ct=3 "
                                   f"--join-timeout=120 "
                                   f"{image} -- sleep 5\n", ["-N1", "-n2"],
                          env={"CHJOIN_TEST_STOP": "holder:start"})
    node = wait_for(lambda: [n for n, names in cluster.shm().items() if names], 30,
                    "the group to form")[0]
    holder = wait_for(lambda: [p for p in processes_of(as_user.uid) if "chjoin-holder" in p
                               and of_job(p.split()[0], job_id)], 30, "the holder")[0].split()[0]
    subprocess.run(["scancel", "-s", "KILL", f"{job_id}.0"], check=True)
    wait_job(job_id)
    cluster.idle()
    name = f"/dev/shm/{as_user.shm_name(f'slurm.{job_id}.0')}"
    lines = log_lines(job_id)
    assert any(line.endswith(f"epilog: job {job_id} on {node}: killed holder pid {holder}")
               for line in lines), lines
    assert any(line.endswith(f": removed {name}") for line in lines), lines
    assert any(line.endswith(f": removed /dev/shm/sem.{name[9:]}") for line in lines), lines
    assert cluster.shm() == {n: [] for n in cluster.nodes}
    assert [p for p in processes_of(as_user.uid) if of_job(p.split()[0], job_id)] == []


def test_epilog_reports_a_clean_job_as_clean(cluster, as_user, image):
    job_id, _out = sbatch(as_user, f"srun -n2 {as_user.chjoin} --join {image} -- true\n",
                          ["-N1", "-n2"])
    wait_job(job_id)
    cluster.idle()
    assert any(line.endswith("epilog: job " + job_id + " on " + line.split(" on ")[1].split(":")[0]
                             + ": nothing left behind") for line in log_lines(job_id))


@pytest.fixture
def private_image(image):
    """A copy of the image only root can read."""
    base = world_readable_dir("chjoin-private-")
    subprocess.run(["cp", "-a", str(image), str(base / "img")], check=True)
    (base / "img").chmod(0o700)
    yield base / "img"
    subprocess.run(["rm", "-rf", str(base)], check=True)


def test_prolog_cancels_a_job_whose_image_its_user_cannot_read(cluster, as_user, private_image):
    job_id, out = sbatch(as_user, "echo ran\n", ["-N1", "-n1",
                                                 f"--comment=chjoin-image={private_image}"])
    wait_job(job_id)
    if as_user.uid == 0:
        assert job_field(job_id, "JobState") == "COMPLETED"
        assert out.read_text() == "ran\n"
        return
    reason = f"image {private_image} is not readable by the job's user: Permission denied"
    assert job_field(job_id, "JobState") == "CANCELLED"
    assert job_field(job_id, "AdminComment") == f"chjoin: {reason}"
    assert any(line.endswith(f"cancelling the job: {reason}") for line in log_lines(job_id))
    assert not out.exists() or "ran" not in out.read_text()


@pytest.fixture
def squashfs_file(squash_dir):
    """A copy of the session's SquashFS image, in a directory the test removes."""
    base = world_readable_dir("chjoin-sqfs-stage-")
    path = base / "image.sqfs"
    shutil.copy(squash_dir / "img.sqfs", path)
    path.chmod(0o644)
    yield path
    subprocess.run(["rm", "-rf", str(base)], check=True)


def test_prolog_stages_a_squashfs_image_on_the_node_and_epilog_removes_it(cluster, as_user,
                                                                          squashfs_file):
    """The staged copy is what chjoin runs: the job runs its command in it."""
    script = (f'staged=/var/lib/chjoin/stage/$SLURM_JOB_ID/{squashfs_file.name}\n'
              f'cmp {squashfs_file} "$staged" && stat -c "%U %s" "$staged" && '
              f'{as_user.chjoin} "$staged" -- cat /etc/image-file\n')
    job_id, out = sbatch(as_user, script, ["-N1", "-n1",
                                           f"--comment=chjoin-stage={squashfs_file}"])
    wait_job(job_id)
    cluster.idle()
    assert out.read_text() == f"{as_user.name} {squashfs_file.stat().st_size}\nfrom the image\n"
    lines = log_lines(job_id)
    assert any(f"staged {squashfs_file} to /var/lib/chjoin/stage/{job_id}/" in line
               for line in lines), lines
    assert any(line.endswith(f"removed /var/lib/chjoin/stage/{job_id}") for line in lines)
    for node in cluster.nodes:
        assert not cluster.on_node(node, "sh", "-c", f"ls /var/lib/chjoin/stage/{job_id} "
                                   "2>/dev/null || true")


def test_prolog_refuses_to_stage_a_truncated_squashfs_image(cluster, as_user, squash_dir):
    job_id, _out = sbatch(as_user, "true\n", ["-N1", "-n1", "--comment=chjoin-stage="
                                               f"{squash_dir / 'truncated.sqfs'}"])
    wait_job(job_id)
    assert job_field(job_id, "JobState") == "CANCELLED"
    assert "truncated: " in job_field(job_id, "AdminComment")


def test_prolog_refuses_to_stage_what_is_not_squashfs(cluster, as_user, image):
    job_id, _out = sbatch(as_user, "true\n", ["-N1", "-n1",
                                              f"--comment=chjoin-stage={image}/etc/passwd"])
    wait_job(job_id)
    assert job_field(job_id, "JobState") == "CANCELLED"
    assert "not a SquashFS file" in job_field(job_id, "AdminComment")


def test_prolog_drains_a_node_where_user_namespaces_fail(cluster):
    """A node that can't create user namespaces can't run any container: the prolog fails
    (slurmd then requeues the job) and drains the node with the reason. The node here is a
    user namespace with user.max_user_namespaces = 0; the drain is the cluster's own."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    node = cluster.nodes[-1]
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "999999", "SLURM_JOB_UID": "0",
           "SLURM_JOB_GID": "0", "SLURM_JOB_USER": "root", "SLURMD_NODENAME": node}
    try:
        done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c",
                               "echo 0 > /proc/sys/user/max_user_namespaces && "
                               'exec "$0" -m chjoin.slurm prolog', sys.executable],
                              capture_output=True, text=True, env=env, timeout=30)
        reason = ("can't run containers: unprivileged user namespaces fail for root: "
                  "No space left on device (user.max_user_namespaces = 0)")
        assert done.returncode == 1, done.stderr
        assert done.stdout == f"chjoin prolog: job 999999 on {node}: {reason}\n"
        drained = subprocess.run(["sinfo", "-h", "-R", "-n", node, "-o", "%E"],
                                 capture_output=True, text=True).stdout.strip()
        assert drained == f"chjoin: {reason}"
    finally:
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"],
                       capture_output=True)
