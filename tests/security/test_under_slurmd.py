"""Issue 18's root-run attacks under a real slurmd (ci/slurm-up single: its Prolog= and Epilog=
are slurm/prolog and slurm/epilog, settings in /etc/chjoin/slurm.conf): planted before the job
starts (`sbatch --hold`, plant, release), as the issue reproduced them. What must hold: nothing
signalled or chowned, the job fails with one line where the prolog refuses, and the node is
never drained (a failing Epilog drains it)."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import attack
from attack import squashfs_file, stuck_path  # noqa: F401 (fixtures)
from conftest import world_readable_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slurm"))
from cluster import cluster, job_field, log_lines, sbatch, wait_job  # noqa: E402,F401

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plays root and two users: run as root")
CONFIG = Path("/etc/chjoin/slurm.conf")


def held(victim, script, *args):
    job_id, _out = sbatch(victim, script, ["-N1", "-n1", "--hold", *args])
    return job_id


def release(job_id, timeout=90):
    subprocess.run(["scontrol", "release", job_id], check=True, capture_output=True)
    wait_job(job_id, timeout)


def node_states():
    return subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True,
                          text=True).stdout.split("\n")


def assert_no_node_drained():
    states = node_states()
    assert not any(s.split()[-1].startswith(("drain", "down")) for s in states if s), states


def ran_on(job_id):
    return job_field(job_id, "NodeList") or ""


def test_the_epilog_signals_nothing_a_planted_record_names_and_keeps_the_node(
        cluster, victim):
    """The attacker plants, under the victim's name for the victim's held job, a record whose
    holder is a process of the victim's named chjoin-holder: the epilog under slurmd signals
    nothing, leaves the attacker's file alone with one line, and exits 0."""
    job_id = held(victim, "true\n")
    proc = attack.bait("victim")
    path = attack.shm_name("victim", f"slurm.{job_id}.0")
    try:
        group = attack.over_group(proc.pid, attack.inodes_of(proc.pid))
        attack.plant(path, attack.record_bytes(f"slurm.{job_id}.0", [group]), "attacker")
        release(job_id)
        cluster.idle()
        assert attack.untouched(proc)
        assert os.stat(path).st_uid == attack.ids("attacker")[0]
        lines = log_lines(job_id)
        assert any(line.endswith(f"epilog: job {job_id} on {ran_on(job_id)}: problem: left "
                                 f"{path} alone: owned by uid {attack.ids('attacker')[0]}, mode "
                                 f"600, not uid {victim.uid}'s with mode 600")
                   for line in lines), lines
        assert job_field(job_id, "JobState") == "COMPLETED"
        assert_no_node_drained()
    finally:
        attack.end(proc)
        attack_unlink(path)


@pytest.mark.parametrize("kind", ["zero slots", "slots past the end"])
def test_the_epilog_removes_a_malformed_record_and_keeps_the_node(cluster, victim, kind):
    """The job's user leaves a record of the job with zero slots, or more than it holds: the
    epilog removes it (as the user), says it was corrupt, and exits 0: no drain."""
    job_id = held(victim, "true\n")
    path = attack.shm_name("victim", f"slurm.{job_id}.0")
    data = attack.struct_group(1, 0) if kind == "zero slots" else attack.struct_group(4, 4)
    attack.plant(path, data, "victim")
    try:
        release(job_id)
        cluster.idle()
        lines = log_lines(job_id)
        assert any(line.endswith(f": removed {path}") for line in lines), lines
        assert any(f": problem: {path}: corrupt (" in line for line in lines), lines
        assert not os.path.exists(path)
        assert_no_node_drained()
    finally:
        attack_unlink(path)


def attack_unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@pytest.fixture
def precious():
    """A directory of root's that the attack wants chowned to the job's user."""
    path = Path(tempfile.mkdtemp(prefix="chjoin-precious-", dir="/opt"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def stage_setting():
    """set(dir): the site's CHJOIN_STAGE_DIR for the next jobs; /etc/chjoin/slurm.conf is put
    back as ci/slurm-up wrote it afterwards."""
    saved = CONFIG.read_text()

    def set_stage(directory):
        CONFIG.write_text("".join(line + "\n" for line in saved.splitlines()
                                  if not line.startswith("CHJOIN_STAGE_DIR=")) +
                          f"CHJOIN_STAGE_DIR={directory}\n")
    yield set_stage
    CONFIG.write_text(saved)


def test_a_stage_directory_the_user_made_chowns_nothing(cluster, victim, precious,
                                                        stage_setting, squashfs_file):
    """The issue's reproduction: the site's stage directory is under /var/tmp, the job's user
    made it first and, while the job is held, plants STAGE/JOBID -> a directory of root's. The
    prolog refuses the stage directory: nothing chowned, the job cancelled with one line."""
    stage = Path(tempfile.mkdtemp(prefix="chjoin-stage-", dir="/var/tmp"))
    os.chmod(stage, 0o755)
    os.chown(stage, victim.uid, victim.gid)
    stage_setting(stage)
    try:
        job_id = held(victim, "true\n", f"--comment=chjoin-stage={squashfs_file}")
        subprocess.run(["ln", "-s", str(precious), str(stage / job_id)], check=True,
                       user=victim.uid, group=victim.gid, extra_groups=[])
        release(job_id)
        reason = (f"can't stage {squashfs_file}: refusing stage directory {stage}: /var/tmp is "
                  "writable by others (mode 1777)")
        assert job_field(job_id, "JobState") == "CANCELLED"
        assert job_field(job_id, "AdminComment") == f"chjoin: {reason}"
        assert os.stat(precious).st_uid == 0 and os.listdir(precious) == []
        assert_no_node_drained()
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def test_a_symlink_in_place_of_the_jobs_directory_chowns_nothing(cluster, victim, precious,
                                                                 squashfs_file):
    """A symlink where the prolog will make the job's directory, in the site's (sound) stage
    directory: the prolog makes it fresh, so it chowns nothing and cancels the job."""
    stage = Path(next(line.split("=", 1)[1] for line in CONFIG.read_text().splitlines()
                      if line.startswith("CHJOIN_STAGE_DIR=")))
    job_id = held(victim, "true\n", f"--comment=chjoin-stage={squashfs_file}")
    link = stage / job_id
    os.makedirs(stage, mode=0o755, exist_ok=True)
    link.symlink_to(precious)
    try:
        release(job_id)
        reason = f"can't stage {squashfs_file}: {link} already exists (this prolog makes it fresh)"
        assert job_field(job_id, "JobState") == "CANCELLED"
        assert job_field(job_id, "AdminComment") == f"chjoin: {reason}"
        assert os.stat(precious).st_uid == 0
        assert_no_node_drained()
    finally:
        link.unlink()


@pytest.fixture
def fifo(victim):
    base = world_readable_dir("chjoin-fifo-")
    path = base / "image"
    os.mkfifo(path, 0o644)
    os.chown(path, victim.uid, victim.gid)
    yield path
    shutil.rmtree(base, ignore_errors=True)


def test_a_fifo_as_image_cancels_the_job_at_once(cluster, victim, fifo):
    job_id, _out = sbatch(victim, "true\n", ["-N1", "-n1", f"--comment=chjoin-image={fifo}"])
    wait_job(job_id, 30)
    assert job_field(job_id, "JobState") == "CANCELLED"
    assert job_field(job_id, "AdminComment") == \
        f"chjoin: image {fifo} is not a regular file or directory"
    assert_no_node_drained()


def test_a_stuck_path_as_image_cancels_the_job_after_the_deadline(cluster, victim, stuck_path):
    """ci/slurm-up sets CHJOIN_CHECK_TIMEOUT=10: the as-user check is killed then."""
    job_id, _out = sbatch(victim, "true\n", ["-N1", "-n1",
                                             f"--comment=chjoin-image={stuck_path}"])
    wait_job(job_id, 60)
    assert job_field(job_id, "JobState") == "CANCELLED"
    assert job_field(job_id, "AdminComment") == (
        f"chjoin: checking image {stuck_path} as {victim.name} was still running after 10 s "
        "(a FIFO, or a mount that does not answer?): killed")
    assert_no_node_drained()
