"""srun, sbatch and scancel with --join on a real Slurm cluster: one container per node and
step, counts from Slurm's environment, and nothing left behind on any node."""

import os
import subprocess
import threading
import time

from cluster import (cluster, log_lines, needs_nodes, processes_of, sbatch, submit,  # noqa: F401
                     wait_for, wait_job)

SHOW = ["--", "sh", "-c", 'echo "$(hostname) $SLURM_STEP_ID $SLURM_PROCID '
        '$(readlink /proc/self/ns/user) $(readlink /proc/self/ns/mnt)"']
HOST_USER_NS = "user:[4026531837]"       # the initial user namespace


def containers(stdout):
    """{host: {(step, user ns, mnt ns): ranks}} from the lines SHOW prints."""
    found = {}
    for line in stdout.splitlines():
        if line.startswith("srun: "):
            continue
        host, step, _rank, user, mnt = line.split()
        key = (step, user, mnt)
        found.setdefault(host, {}).setdefault(key, 0)
        found[host][key] += 1
    return found


def assert_nothing_left(cluster, as_user):
    cluster.idle()
    assert cluster.shm() == {node: [] for node in cluster.nodes}
    assert processes_of(as_user.uid) == []


def test_srun_puts_the_tasks_of_a_node_in_one_container(cluster, as_user, image):
    done = submit(as_user, ["srun", "-N1", "-n8", as_user.chjoin, "--join", image, *SHOW])
    assert done.returncode == 0, done.stderr
    [(host, found)] = containers(done.stdout).items()
    [((_step, user, _mnt), ranks)] = found.items()
    assert ranks == 8
    assert user != HOST_USER_NS
    assert_nothing_left(cluster, as_user)


def test_srun_tasks_that_exit_at_once_all_succeed(cluster, as_user, image):
    """ch-run defect 1: a winner whose command exits at once leaves its peers failing."""
    done = submit(as_user, ["srun", "-N1", "-n8", as_user.chjoin, "--join", image, "--", "true"])
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr
    assert_nothing_left(cluster, as_user)


@needs_nodes(3)
def test_uneven_layout_gets_one_container_per_node_holding_its_tasks(cluster, as_user, image):
    """srun -N3 -n7 --exclusive lays out 3,2(x2); each node's count comes from
    SLURM_STEP_TASKS_PER_NODE at its own SLURM_NODEID (ch-run reads the first entry only)."""
    done = submit(as_user, ["srun", "-N3", "-n7", "--exclusive", as_user.chjoin, "-v", "--join",
                            image, *SHOW])
    assert done.returncode == 0, done.stderr
    found = containers(done.stdout)
    assert {host: list(c.values()) for host, c in found.items()} == \
        {"c1": [3], "c2": [2], "c3": [2]}
    namespaces = [key for c in found.values() for key in c]
    assert len(set(namespaces)) == 3
    for node, size in enumerate([3, 2, 2]):
        assert (f"join: peer group size {size} (from Slurm: SLURM_STEP_TASKS_PER_NODE, "
                f"node {node})") in done.stderr
    assert_nothing_left(cluster, as_user)


def test_each_step_of_a_batch_job_gets_its_own_container(cluster, as_user, image):
    run = f"srun -n2 {as_user.chjoin} --join {image} " + " ".join(
        f"'{word}'" for word in SHOW)
    job_id, out = sbatch(as_user, f"{run}\n{run}\n{run} &\n{run} &\nwait\n", ["-N1", "-n4"])
    wait_job(job_id)
    [(_host, found)] = containers(out.read_text()).items()
    assert sorted(step for step, _user, _mnt in found) == ["0", "1", "2", "3"]
    assert list(found.values()) == [2] * 4
    assert len({(user, mnt) for _step, user, mnt in found}) == 4
    assert_nothing_left(cluster, as_user)


def test_two_jobs_of_one_user_never_share_a_container(cluster, as_user, image):
    """ch-run defect 6: its default tag is the step number alone, so step 0 of two jobs of one
    user on one node meet in one container."""
    node = cluster.nodes[0]
    run = (f"srun -n2 {as_user.chjoin} --join {image} -- sh -c "
           "'echo $SLURM_JOB_ID $(readlink /proc/self/ns/mnt); sleep 2'\n")
    jobs = [sbatch(as_user, run, ["-N1", "-n2", "-w", node]) for _ in range(2)]
    for job_id, _out in jobs:
        wait_job(job_id)
    seen = [set(out.read_text().split("\n")) - {""} for _job, out in jobs]
    for (job_id, _out), lines in zip(jobs, seen):
        assert len(lines) == 1 and lines.pop().startswith(f"{job_id} mnt:"), seen
    namespaces = [out.read_text().split()[1] for _job, out in jobs]
    assert namespaces[0] != namespaces[1]
    assert_nothing_left(cluster, as_user)


def test_scancel_while_holders_wait_leaves_nothing_on_any_node(cluster, as_user, image):
    """Every node's two ranks run while their holder waits for a third rank that never comes,
    and the job is cancelled. The holder is reparented away from slurmstepd, so this cluster's
    proctrack/linuxproc does not signal it: the epilog kills it and removes its group's names,
    and says so. Nothing is left on any node."""
    nodes = len(cluster.nodes)
    job_id, _out = sbatch(as_user, f"srun {as_user.chjoin} --join-ct=3 --join-timeout=120 "
                                   f"{image} -- sleep 60\n", [f"-N{nodes}", "--ntasks-per-node=2"])
    wait_for(lambda: all(cluster.shm().values()), 30, "every node's group to form")
    subprocess.run(["scancel", job_id], check=True)
    wait_job(job_id)
    assert_nothing_left(cluster, as_user)
    lines = log_lines(job_id)
    name = as_user.shm_name(f"slurm.{job_id}.0")
    for node in cluster.nodes:
        assert any(f"job {job_id} on {node}: removed /dev/shm/{name}" in line or f"job {job_id} on {node}: nothing left" in line
                   for line in lines), lines


def squashfs_daemons(cluster, image):
    """{node: [pids]} of the live squashfuse_ll processes serving `image`: a daemon lives in its
    node's own namespaces (those of the node's slurmd), outside the containers."""
    nodes = {os.readlink(f"/proc/{pid}/ns/mnt"): node for node, pid in cluster.slurmd.items()}
    found = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "squashfuse_ll":
                    continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    continue
            fds = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") == str(image) for fd in fds):
                node = nodes.get(os.readlink(f"/proc/{entry}/ns/mnt"), "elsewhere")
                found.setdefault(node, []).append(int(entry))
        except (OSError, ValueError):
            continue
    return found


@needs_nodes(3)
def test_squashfs_image_one_daemon_and_one_mount_per_node(cluster, as_user, squash_dir):
    """srun -N3 -n7 --join on a SquashFS image: each node's ranks share one container on one
    FUSE mount, served by one squashfuse_ll in that node's own namespaces; when the step ends,
    no daemon is left anywhere."""
    image = squash_dir / "img.sqfs"
    show = ["--", "sh", "-c", 'echo "$(hostname) $(stat -c %d /) $(awk \'$5 == "/" '
            '{ for (i = 7; i <= NF; i++) if ($i == "-") print $(i + 1) }\' /proc/self/mountinfo)'
            '"; sleep 2']
    result, most = {}, {}

    def step():
        result["done"] = submit(as_user, ["srun", "-N3", "-n7", "--exclusive", as_user.chjoin,
                                          "--join", image, *show])
    thread = threading.Thread(target=step)
    thread.start()
    while thread.is_alive():
        for node, pids in squashfs_daemons(cluster, image).items():
            most[node] = max(most.get(node, 0), len(pids))
        time.sleep(0.05)
    thread.join()
    done = result["done"]
    assert done.returncode == 0, done.stderr
    seen = {}
    for line in done.stdout.splitlines():
        if not line.startswith("srun: "):
            host, device, fstype = line.split()
            assert fstype == "fuse.squashfuse_ll", line
            seen.setdefault(host, []).append(device)
    assert sorted((host, len(devices)) for host, devices in seen.items()) == \
        [("c1", 3), ("c2", 2), ("c3", 2)]
    assert all(len(set(devices)) == 1 for devices in seen.values()), seen
    assert most == {"c1": 1, "c2": 1, "c3": 1}, most
    deadline = time.monotonic() + 5
    while squashfs_daemons(cluster, image) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert squashfs_daemons(cluster, image) == {}
    assert_nothing_left(cluster, as_user)
