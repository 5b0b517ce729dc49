"""Attack 7 of issue 18 under a real slurmd: another user takes the names of your next job's
step first. The victim's job is submitted held (its id is then public, as every job id is), the
attacker takes every name of its step that they can compute on the node, as themselves, and the
job is released: its ranks still meet in one container, and leave nothing of the victim's (what
the epilog does with the attacker's files is the root-run part's). Needs the test cluster.
"""

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "slurm"))

from cluster import cluster, sbatch, wait_job  # noqa: E402, F401

from conftest import Runner  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: two users")

SQUAT = """
import os, sys, posix_ipc
os.umask(0)
for name in sys.argv[1:]:
    for path in (f"/dev/shm/{name}", f"/dev/shm/sem.{name}"):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o666))
"""


def test_a_held_jobs_plain_names_taken_by_another_user_do_not_stop_its_step(cluster, chjoin,
                                                                             image):
    victim, attacker = Runner(chjoin, "user"), Runner(chjoin, "attacker")
    node = cluster.nodes[0]
    run = (f"srun -n3 {victim.chjoin} --join {image} -- sh -c "
           "'echo $(readlink /proc/self/ns/mnt)'\n")
    job_id, out = sbatch(victim, run, ["-N1", "-n3", "-w", node, "--hold"])
    names = [f"chjoin-{victim.uid}-slurm.{job_id}.0", f"chjoin-{victim.uid}-slurm.{job_id}.batch"]
    python = os.path.join(os.path.dirname(attacker.chjoin), "python")
    try:
        cluster.on_node(node, "setpriv", f"--reuid={attacker.uid}", f"--regid={attacker.gid}",
                        "--clear-groups", python, "-I", "-c", SQUAT, *names)
        squatted = cluster.shm()[node]
        subprocess.run(["scontrol", "release", job_id], check=True)
        wait_job(job_id)
        cluster.idle()
        victims = cluster.on_node(node, "find", "/dev/shm", "-user", str(victim.uid)).split()
    finally:
        cluster.on_node(node, "rm", "-f", *[f"/dev/shm/{p}{n}" for n in names
                                             for p in ("", "sem.")])
    assert sorted(squatted) == sorted(n for name in names for n in (name, f"sem.{name}"))
    lines = out.read_text().split()
    assert len(lines) == 3 and len(set(lines)) == 1 and lines[0].startswith("mnt:"), \
        out.read_text()
    assert victims == [], "the step left objects of the victim's behind"
