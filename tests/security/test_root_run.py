"""Issue 18, the parts that run as root: `chjoinctl gc`/`ps` as root, the Slurm prolog and
epilog, their wrappers. Each test is an attack by chjoin-attacker (a hostile neighbour) or by the
job's own user (chjoin-test, the victim elsewhere), run as slurmd would run the hook (root, the
SLURM_* variables only), and asserts on what the users see: which process got a signal, which
file changed owner, what the hook printed, and that it ended, and how."""

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from itertools import count
from pathlib import Path

import pytest

import attack
from attack import squashfs_file, stuck_path  # noqa: F401 (fixtures)
from chjoin import ns
from chjoin.record import READY, WAITING, Group
from conftest import world_readable_dir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plays root and two users: run as root")
JOBS = count(4_000_000_000 + os.getpid() % 1000 * 1000)   # ids no Slurm has (scancel is a no-op)


@pytest.fixture
def chjoinctl(chjoin):
    return str(Path(chjoin).parent / "chjoinctl")


@pytest.fixture
def scratch():
    """A directory of root's nobody else can write (as a site's /etc or /var/lib is)."""
    path = Path(tempfile.mkdtemp(prefix="chjoin-sec-", dir="/run"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def victim_dir():
    """A directory of the victim's, readable by everyone."""
    path = world_readable_dir("chjoin-victim-")
    os.chown(path, *attack.ids("victim"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def lines(done):
    return done.stdout.splitlines()


def unlink(*paths):
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# --- attack 1: root signals any process a user names ---------------------------------------

@pytest.mark.parametrize("named", ["root", "victim"])
def test_gc_as_root_signals_no_process_a_forged_record_names(chjoinctl, named):
    """The attacker writes a well-formed record whose group is over and whose holder is a
    process of root's or of the victim's, even one named chjoin-holder, with its real start
    time and namespace inodes: root's gc removes the attacker's record as the attacker, and
    signals nothing."""
    proc = attack.bait(named)
    path = attack.shm_name("attacker", f"forged-{named}-{os.getpid()}")
    try:
        group = attack.over_group(proc.pid, attack.inodes_of(proc.pid))
        attack.plant(path, attack.record_bytes("forged", [group]), "attacker")
        done = attack.gc(chjoinctl)
        assert done.returncode == 0, done.stderr
        assert attack.untouched(proc)
        uid = attack.ids(named)[0]
        assert (f"problem: did not signal the holder the record names: pid {proc.pid} runs as "
                f"uids [{uid}, {uid}, {uid}, {uid}], not {attack.ids('attacker')[0]}"
                ) in lines(done)
        assert f"remove {path}" in lines(done) and not os.path.exists(path)
    finally:
        attack.end(proc)
        unlink(path)


def test_the_epilog_leaves_alone_a_record_another_user_planted_under_the_jobs_name(
        chjoinctl, slurm_config):
    """The attacker plants a record under the victim's name for the victim's job
    (`chjoin-<victim>-slurm.<JOB>.0`) whose holder is the victim's process: the victim's epilog
    signals nothing, leaves the attacker's file where it is (it isn't the victim's), says so in
    one line, and exits 0."""
    job = next(JOBS)
    proc = attack.bait("victim")
    path = attack.shm_name("victim", f"slurm.{job}.0")
    try:
        group = attack.over_group(proc.pid, attack.inodes_of(proc.pid))
        attack.plant(path, attack.record_bytes(f"slurm.{job}.0", [group]), "attacker")
        done = attack.hook("epilog", job, "victim", "--config",
                           slurm_config(CHJOIN_STAGE_DIR="/nonexistent"))
        assert done.returncode == 0, done.stderr
        assert attack.untouched(proc)
        assert lines(done) == [
            f"chjoin epilog: job {job} on n1: problem: left {path} alone: owned by uid "
            f"{attack.ids('attacker')[0]}, mode 600, not uid {attack.ids('victim')[0]}'s "
            "with mode 600"]
        assert os.stat(path).st_uid == attack.ids("attacker")[0]
        ps = subprocess.run([chjoinctl, "ps"], capture_output=True, text=True, timeout=30)
        assert any(path in line and "FOREIGN" in line for line in lines(ps)), ps.stdout
    finally:
        attack.end(proc)
        unlink(path)


@pytest.mark.parametrize("named", ["root", "victim"])
def test_ps_as_root_reads_nothing_of_a_process_a_forged_named_record_names(chjoinctl, named):
    """The attacker plants a named container's record whose holder is a process of root's or
    the victim's, named chjoin-holder, with its real start time and namespaces: root's `ps`
    shows the container as gone, and reads neither that process's memory nor its root's file
    system (it is not the attacker's holder)."""
    proc = attack.bait(named)
    name = f"forged{os.getpid()}{named}"
    path = attack.shm_name("attacker", f"named-{name}")
    try:
        group = Group(expected=0, deadline=0.0, slots=[[proc.pid, WAITING, 1]])
        group.state, group.inodes = READY, attack.inodes_of(proc.pid)
        group.holder = (proc.pid, ns.start_time(proc.pid))
        attack.plant(path, attack.record_bytes(f"name..{name}", [group]), "attacker")
        done = subprocess.run([chjoinctl, "ps", "--json"], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
        found = [n for n in json.loads(done.stdout)["names"] if n["name"] == name]
        assert [(n["state"], n["holder_alive"], n["holder_kib"], n["tmpfs_kib"], n["inside"])
                for n in found] == [("gone", False, None, None, 0)]
        assert attack.untouched(proc)
    finally:
        attack.end(proc)
        unlink(path)


def test_the_epilog_kills_only_the_jobs_own_holders(slurm_config):
    """A process of root's and one of the attacker's, both named chjoin-holder and both with
    the job's SLURM_JOB_ID in their environment: the victim's epilog kills neither (it signals
    as the victim, and only the victim's holders)."""
    job = next(JOBS)
    env = {"SLURM_JOB_ID": str(job)}
    procs = []
    for who in ("root", "attacker"):
        code = ("import ctypes, time; ctypes.CDLL(None).prctl(15, b'chjoin-holder', 0, 0, 0); "
                "print('ready', flush=True); time.sleep(300)")
        proc = subprocess.Popen([attack.PYTHON, "-I", "-c", code], stdout=subprocess.PIPE,
                                env=env, cwd="/", **attack.as_who(who))
        assert proc.stdout.readline() == b"ready\n"
        procs.append(proc)
    try:
        done = attack.hook("epilog", job, "victim", "--config",
                           slurm_config(CHJOIN_STAGE_DIR="/nonexistent"))
        assert (done.returncode, lines(done)) == (
            0, [f"chjoin epilog: job {job} on n1: nothing left behind"])
        assert all(attack.untouched(p) for p in procs)
    finally:
        for proc in procs:
            attack.end(proc)


# --- attack 2: root cleanup crashes on a malformed record ----------------------------------

MALFORMED = {
    "zero slots": attack.struct_group(1, 0),
    "slots past the end": attack.struct_group(4, 4),
    "more slots than ranks": attack.struct_group(1, 3, bytes(3 * 16)),
    "garbage": os.urandom(4096),
    "short": b"chjoin\0t",
    "too long": bytes(attack.record.SIZE + 4096),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_gc_ps_and_the_epilog_remove_a_malformed_record_and_exit_0(chjoinctl, slurm_config,
                                                                   kind):
    """The victim's own record, made malformed by the victim: `ps` as root shows it CORRUPT,
    `gc` as root and the epilog exit 0 and remove it (as its owner), saying it was corrupt."""
    job = next(JOBS)
    path = attack.plant(attack.shm_name("victim", f"slurm.{job}.0"), MALFORMED[kind], "victim")
    try:
        ps = subprocess.run([chjoinctl, "ps", "--uid", str(attack.ids("victim")[0])],
                            capture_output=True, text=True, timeout=30)
        assert ps.returncode == 0, ps.stderr
        assert any(path in line and "CORRUPT" in line for line in lines(ps)), ps.stdout
        done = attack.hook("epilog", job, "victim", "--config",
                           slurm_config(CHJOIN_STAGE_DIR="/nonexistent"))
        assert done.returncode == 0, done.stderr
        assert f"chjoin epilog: job {job} on n1: removed {path}" in lines(done)
        assert any(line.startswith(f"chjoin epilog: job {job} on n1: problem: {path}: corrupt")
                   for line in lines(done)), done.stdout
        assert not os.path.exists(path)
        attack.plant(path, MALFORMED[kind], "victim")
        done = attack.gc(chjoinctl)
        assert done.returncode == 0, done.stderr
        assert f"remove {path}" in lines(done) and not os.path.exists(path)
    finally:
        unlink(path)


def test_gc_ps_and_the_epilog_end_on_a_fifo_under_a_records_name(chjoinctl, slurm_config):
    """A FIFO where a record would be: `ps` as root ends at once (no blocking open), `gc` and
    the epilog exit 0 and leave it alone with one line (it is no record)."""
    job = next(JOBS)
    path = attack.shm_name("victim", f"slurm.{job}.0")
    os.mkfifo(path, 0o600)
    os.chown(path, *attack.ids("victim"))
    try:
        ps = subprocess.run([chjoinctl, "ps"], capture_output=True, text=True, timeout=20)
        assert ps.returncode == 0, ps.stderr
        done = attack.gc(chjoinctl, timeout=20)
        assert done.returncode == 0, done.stderr
        assert f"problem: left {path} alone: not a regular file" in lines(done)
        done = attack.hook("epilog", job, "victim", "--config",
                           slurm_config(CHJOIN_STAGE_DIR="/nonexistent"), timeout=20)
        assert (done.returncode, lines(done)) == (0, [
            f"chjoin epilog: job {job} on n1: problem: left {path} alone: not a regular file"])
    finally:
        unlink(path)


def test_a_record_truncated_in_a_loop_never_kills_gc_or_the_epilog(chjoinctl, slurm_config):
    """The victim keeps truncating its record and writing it back while root's gc and the
    epilog read it, over and over: each run exits 0 (never SIGBUS: root reads one pread
    snapshot, it never maps a user's file)."""
    job = next(JOBS)
    path = attack.shm_name("victim", f"slurm.{job}.0")
    data = attack.record_bytes(f"slurm.{job}.0", [attack.over_group(0)])
    attack.plant(path, data, "victim")
    proc = attack.truncating(path, "victim", data, 20)
    config = slurm_config(CHJOIN_STAGE_DIR="/nonexistent")
    try:
        codes = []
        for _ in range(10):
            codes.append(attack.gc(chjoinctl, "--uid", str(attack.ids("victim")[0])).returncode)
            codes.append(attack.hook("epilog", job, "victim", "--config", config).returncode)
            codes.append(subprocess.run([chjoinctl, "ps"], capture_output=True).returncode)
        assert codes == [0] * 30
    finally:
        proc.kill()
        proc.wait()
        unlink(path)


# --- attack 3: the prolog chowns a directory the user chose ---------------------------------

def target_dir(scratch):
    """A directory of root's that nobody may be given: what the attack wants chowned."""
    target = scratch / "precious"
    target.mkdir(mode=0o755)
    return target


def test_the_prolog_refuses_a_stage_directory_a_user_made(scratch, slurm_config,
                                                           squashfs_file):
    """The job's user made the stage directory first, under world-writable /var/tmp, with the
    job's directory in it a symlink to a root-owned directory: the prolog stages nothing,
    chowns nothing, and cancels the job with one line."""
    job = next(JOBS)
    target = target_dir(scratch)
    planted = Path(tempfile.mkdtemp(prefix="chjoin-stage-", dir="/var/tmp"))
    os.chmod(planted, 0o755)
    (planted / str(job)).symlink_to(target)
    os.chown(planted / str(job), *attack.ids("victim"), follow_symlinks=False)
    os.chown(planted, *attack.ids("victim"))
    try:
        done = attack.hook("prolog", job, "victim", "--config",
                           slurm_config(CHJOIN_STAGE_DIR=planted),
                           "--comment", f"chjoin-stage={squashfs_file}")
        assert (done.returncode, lines(done)) == (0, [
            f"chjoin prolog: job {job} on n1: cancelling the job: can't stage {squashfs_file}: "
            f"refusing stage directory {planted}: /var/tmp is writable by others (mode 1777)"])
        assert os.stat(target).st_uid == 0 and os.listdir(target) == []
    finally:
        shutil.rmtree(planted, ignore_errors=True)


def test_the_prolog_refuses_a_stage_directory_of_a_user_under_a_sound_parent(
        scratch, slurm_config, squashfs_file):
    """The stage directory is the user's (under a parent of root's): refused, one line."""
    job = next(JOBS)
    stage = scratch / "stage"
    stage.mkdir(mode=0o755)
    os.chown(stage, *attack.ids("attacker"))
    done = attack.hook("prolog", job, "victim", "--config",
                       slurm_config(CHJOIN_STAGE_DIR=stage),
                       "--comment", f"chjoin-stage={squashfs_file}")
    assert (done.returncode, lines(done)) == (0, [
        f"chjoin prolog: job {job} on n1: cancelling the job: can't stage {squashfs_file}: "
        f"refusing stage directory {stage}: {stage} is owned by uid "
        f"{attack.ids('attacker')[0]}, not root"])
    assert os.listdir(stage) == []


def test_the_prolog_never_follows_a_job_directory_symlink(scratch, slurm_config, squashfs_file):
    """A symlink where the job's directory will be made, in a sound stage directory: the
    prolog makes its directories fresh (mkdir), so it chowns nothing and cancels the job."""
    job = next(JOBS)
    target = target_dir(scratch)
    stage = scratch / "stage"
    stage.mkdir(mode=0o755)
    (stage / str(job)).symlink_to(target)
    done = attack.hook("prolog", job, "victim", "--config", slurm_config(CHJOIN_STAGE_DIR=stage),
                       "--comment", f"chjoin-stage={squashfs_file}")
    assert (done.returncode, lines(done)) == (0, [
        f"chjoin prolog: job {job} on n1: cancelling the job: can't stage {squashfs_file}: "
        f"{stage}/{job} already exists (this prolog makes it fresh)"])
    assert os.stat(target).st_uid == 0 and os.listdir(target) == []


def test_the_prolog_stages_into_a_fresh_directory_of_the_users_and_the_epilog_removes_it(
        scratch, slurm_config, squashfs_file):
    """In a sound stage directory (made by the prolog itself), staging works: the copy is the
    user's, in a 0700 directory of the user's; the epilog removes both."""
    job = next(JOBS)
    stage = scratch / "stage"
    config = slurm_config(CHJOIN_STAGE_DIR=stage)
    done = attack.hook("prolog", job, "victim", "--config", config,
                       "--comment", f"chjoin-stage={squashfs_file}")
    assert done.returncode == 0, done.stderr
    staged = stage / str(job) / squashfs_file.name
    assert lines(done)[0].startswith(f"chjoin prolog: job {job} on n1: staged {squashfs_file} "
                                     f"to {staged} ("), done.stdout
    assert lines(done)[1:] == [f"chjoin prolog: job {job} on n1: node ready for containers"]
    assert staged.read_bytes() == squashfs_file.read_bytes()
    uid = attack.ids("victim")[0]
    assert (os.stat(staged).st_uid, os.stat(staged.parent).st_uid) == (uid, uid)
    assert stat.S_IMODE(os.stat(staged.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(stage).st_mode) == 0o755 and os.stat(stage).st_uid == 0
    done = attack.hook("epilog", job, "victim", "--config", config)
    assert (done.returncode, lines(done)) == (0, [
        f"chjoin epilog: job {job} on n1: removed {stage}/{job}"])
    assert os.listdir(stage) == []


# --- attack 4: the prolog hangs on a user's path --------------------------------------------

@pytest.mark.parametrize("key", ["chjoin-image", "chjoin-stage"])
def test_a_fifo_as_image_fails_the_job_at_once(victim_dir, scratch, slurm_config, key):
    """`--comment=chjoin-image=FIFO` (or -stage): opened O_NONBLOCK, found to be no file, the
    job cancelled with one line; the prolog never waits for a writer."""
    job = next(JOBS)
    fifo = victim_dir / "fifo"
    os.mkfifo(fifo, 0o644)
    os.chown(fifo, *attack.ids("victim"))
    started = time.monotonic()
    done = attack.hook("prolog", job, "victim", "--config",
                       slurm_config(CHJOIN_STAGE_DIR=scratch / "stage"),
                       "--comment", f"{key}={fifo}", timeout=30)
    assert time.monotonic() - started < 10
    problem = (f"image {fifo} is not a regular file or directory" if key == "chjoin-image" else
               f"can't stage {fifo}: not a regular file or directory")
    assert (done.returncode, lines(done)) == (0, [
        f"chjoin prolog: job {job} on n1: cancelling the job: {problem}"])


def test_a_stuck_path_as_image_fails_the_job_within_the_deadline(stuck_path, scratch,
                                                                 slurm_config):
    """The as-user check of an image on a mount that never answers is killed after
    CHJOIN_CHECK_TIMEOUT; the job is cancelled with one line naming the path."""
    job = next(JOBS)
    started = time.monotonic()
    done = attack.hook("prolog", job, "victim", "--config",
                       slurm_config(CHJOIN_STAGE_DIR=scratch / "stage", CHJOIN_CHECK_TIMEOUT=2),
                       "--comment", f"chjoin-image={stuck_path}", timeout=30)
    assert time.monotonic() - started < 10
    assert (done.returncode, lines(done)) == (0, [
        f"chjoin prolog: job {job} on n1: cancelling the job: checking image {stuck_path} as "
        f"chjoin-test was still running after 2 s (a FIFO, or a mount that does not answer?): "
        "killed"])


def test_the_prolog_as_a_whole_ends_by_its_own_deadline(stuck_path, scratch, slurm_config):
    """CHJOIN_HOOK_TIMEOUT bounds the whole prolog, whatever each step's own deadline: an image
    check that would be let run 60 s on a mount that never answers is killed at the hook's
    deadline, and the job is cancelled with one line saying so."""
    job = next(JOBS)
    config = slurm_config(CHJOIN_STAGE_DIR=scratch / "stage", CHJOIN_CHECK_TIMEOUT=60,
                          CHJOIN_HOOK_TIMEOUT=4)
    done = attack.hook("prolog", job, "victim", "--config", config, "--comment",
                       f"chjoin-image={stuck_path} chjoin-stage={stuck_path}", timeout=20)
    assert (done.returncode, lines(done)[0]) == (0, (
        f"chjoin prolog: job {job} on n1: cancelling the job: checking image {stuck_path} as "
        "chjoin-test was still running at the hook's deadline (CHJOIN_HOOK_TIMEOUT=4 s): "
        "killed"))
    # with no slurmctld to answer, scontrol and scancel get what is left of the 4 s, no more
    assert all(line.endswith(("scontrol did not answer in 1 s", "scancel did not answer in 1 s"))
               for line in lines(done)[1:]), done.stdout


def test_the_epilog_as_a_whole_ends_by_its_own_deadline(squashfs_file, scratch, slurm_config):
    """The job's user left a FUSE mount whose daemon is stopped in their stage directory (it is
    theirs): emptying it as the user hangs; the epilog kills that at CHJOIN_HOOK_TIMEOUT,
    though CHJOIN_STAGE_TIMEOUT would allow 600 s, says so in one line, and exits 0."""
    job = next(JOBS)
    stage = scratch / "stage"
    stage.mkdir(mode=0o755)
    mnt = stage / str(job) / "m"
    mnt.mkdir(parents=True)
    os.chmod(mnt.parent, 0o700)
    subprocess.run(["chown", "-R", "{}:{}".format(*attack.ids("victim")), str(mnt.parent)],
                   check=True)
    daemon = subprocess.Popen(["squashfuse", "-f", "-o", "allow_other", str(squashfs_file),
                               str(mnt)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.ismount(mnt):
            assert time.monotonic() < deadline and daemon.poll() is None, "no mount"
            time.sleep(0.05)
        daemon.send_signal(signal.SIGSTOP)
        config = slurm_config(CHJOIN_STAGE_DIR=stage, CHJOIN_STAGE_TIMEOUT=600,
                              CHJOIN_HOOK_TIMEOUT=4)
        done = attack.hook("epilog", job, "victim", "--config", config, timeout=20)
        assert (done.returncode, lines(done)) == (0, [
            f"chjoin epilog: job {job} on n1: problem: emptying {stage}/{job} as chjoin-test "
            "was still running at the hook's deadline (CHJOIN_HOOK_TIMEOUT=4 s): killed"])
    finally:
        daemon.send_signal(signal.SIGCONT)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        daemon.terminate()
        daemon.wait()


def test_names_another_user_floods_the_jobs_prefix_with_are_a_bounded_number_of_lines(
        slurm_config):
    """The attacker makes 300 files under the victim's prefix (`chjoin-<victim>-…`): the
    victim's epilog leaves them alone, as before, but its log gets 20 of those lines and one
    with the count of the rest, not 300."""
    job = next(JOBS)
    paths = [attack.plant(attack.shm_name("victim", f"flood-{os.getpid()}-{i:03}"), b"x",
                          "attacker") for i in range(300)]
    try:
        done = attack.hook("epilog", job, "victim", "--config",
                           slurm_config(CHJOIN_STAGE_DIR="/nonexistent"))
        assert done.returncode == 0, done.stderr
        prefix = f"chjoin epilog: job {job} on n1: problem: "
        assert [line.removeprefix(prefix) for line in lines(done)] == [
            f"left {path} alone: owned by uid {attack.ids('attacker')[0]}, mode 600, not uid "
            f"{attack.ids('victim')[0]}'s with mode 600" for path in sorted(paths)[:20]] + [
            f"280 more like these with uid {attack.ids('victim')[0]}'s objects"]
        assert all(os.path.exists(path) for path in paths)
    finally:
        unlink(*paths)


def test_roots_sweep_stops_looking_at_names_at_its_deadline():
    """Root's own walk over the names under a prefix (before any as-owner child) ends at the
    sweep's deadline, however many names anybody made there: one line says how many were left
    unread, and none was touched."""
    from chjoin import sweep
    paths = [attack.plant(attack.shm_name("victim", f"late-{os.getpid()}-{i}"), b"x", "attacker")
             for i in range(3)]
    try:
        done = sweep.sweep_all(attack.ids("victim")[0], deadline=time.monotonic() - 1)
        assert done == [("problem", f"out of time: 3 names of uid {attack.ids('victim')[0]} "
                                    "not looked at")]
        assert sweep.bounded(done * 30, 1) == done * 30      # such lines are never cut
        assert all(os.path.exists(path) for path in paths)
    finally:
        unlink(*paths)


# --- item 8: what the hooks take from their surroundings ------------------------------------

def test_settings_in_the_environment_are_ignored(scratch, slurm_config):
    """CHJOIN_SLURM_LOG and CHJOIN_STAGE_DIR in the hook's environment change nothing: settings
    come from the root-owned file only."""
    job = next(JOBS)
    log = scratch / "from-env.log"
    stage = scratch / "env-stage"
    stage.mkdir(mode=0o755)
    (stage / str(job)).mkdir(mode=0o700)
    os.chown(stage / str(job), *attack.ids("victim"))
    done = attack.hook("epilog", job, "victim", "--config",
                       slurm_config(CHJOIN_STAGE_DIR="/nonexistent"),
                       env={"CHJOIN_SLURM_LOG": str(log), "CHJOIN_STAGE_DIR": str(stage)})
    assert (done.returncode, lines(done)) == (
        0, [f"chjoin epilog: job {job} on n1: nothing left behind"])
    assert not log.exists() and (stage / str(job)).exists()


@pytest.mark.parametrize("flaw", ["owned by the attacker", "world-writable"])
def test_a_settings_file_another_user_can_write_is_ignored(scratch, flaw):
    """A settings file the attacker owns, or anyone may write: ignored, with one line; its log
    is never opened."""
    job = next(JOBS)
    config, log = scratch / "slurm.conf", scratch / "evil.log"
    config.write_text(f"CHJOIN_SLURM_LOG={log}\n")
    if flaw == "world-writable":
        os.chmod(config, 0o666)
        why = f"{config} is writable by others (mode 666)"
    else:
        os.chown(config, *attack.ids("attacker"))
        why = f"{config} is owned by uid {attack.ids('attacker')[0]}, not root"
    done = attack.hook("epilog", job, "victim", "--config", str(config))
    assert (done.returncode, lines(done)) == (0, [
        f"chjoin epilog: job {job} on n1: ignoring {config}: {why}",
        f"chjoin epilog: job {job} on n1: nothing left behind"])
    assert not log.exists()


def test_the_log_is_never_written_through_a_symlink(scratch, slurm_config):
    """CHJOIN_SLURM_LOG names a symlink (planted where the log goes) to a file of root's: the
    hook appends nothing to it, and says so."""
    job = next(JOBS)
    precious = scratch / "precious"
    precious.write_text("root's\n")
    logs = Path(tempfile.mkdtemp(prefix="chjoin-logs-", dir="/var/tmp"))
    try:
        (logs / "chjoin.log").symlink_to(precious)
        done = attack.hook("epilog", job, "victim", "--config",
                           slurm_config(CHJOIN_STAGE_DIR="/nonexistent",
                                        CHJOIN_SLURM_LOG=logs / "chjoin.log"))
        assert (done.returncode, lines(done)) == (0, [
            f"chjoin epilog: job {job} on n1: not logging to {logs}/chjoin.log: a symlink",
            f"chjoin epilog: job {job} on n1: nothing left behind"])
        assert precious.read_text() == "root's\n"
    finally:
        shutil.rmtree(logs, ignore_errors=True)


def test_the_log_gets_one_line_per_report(scratch, slurm_config):
    job = next(JOBS)
    log = scratch / "chjoin.log"
    attack.hook("epilog", job, "victim", "--config",
                slurm_config(CHJOIN_STAGE_DIR="/nonexistent", CHJOIN_SLURM_LOG=log))
    text = log.read_text()
    assert text.endswith(f" chjoin epilog: job {job} on n1: nothing left behind\n")
    assert text.count("\n") == 1 and stat.S_IMODE(os.stat(log).st_mode) == 0o640


@pytest.mark.parametrize("role", ["prolog", "epilog"])
def test_the_wrappers_import_nothing_from_their_directory_or_environment(
        role, victim_dir, slurm_config):
    """slurmd's working directory holding a `chjoin` package of the user's, PYTHONPATH naming
    it and CHJOIN_PYTHON naming the user's program: the wrapper runs chjoin's own Python from
    the settings file (`cd /`, `python -I`), none of the user's code."""
    job = next(JOBS)
    marker = victim_dir / "ran"
    (victim_dir / "chjoin").mkdir()
    for name in ("__init__.py", "slurm.py"):
        (victim_dir / "chjoin" / name).write_text(f"open({str(marker)!r}, 'w').close()\n")
    evil = victim_dir / "python"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\n")
    evil.chmod(0o755)
    config = slurm_config(CHJOIN_PYTHON=attack.PYTHON, CHJOIN_STAGE_DIR="/nonexistent")
    done = attack.wrapper(role, job, "victim", config, cwd=victim_dir,
                          env={"PYTHONPATH": str(victim_dir), "CHJOIN_PYTHON": str(evil),
                               "CHJOIN_SLURM_CONF": str(victim_dir / "none")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not marker.exists()
    assert lines(done)[-1] in (f"chjoin prolog: job {job} on n1: node ready for containers",
                               f"chjoin epilog: job {job} on n1: nothing left behind")


# --- item 8: _foreign names the owner of what is there, never a link's target ---------------

def test_a_symlink_squatting_a_records_name_is_named_as_the_attackers(chjoin, image):
    """The attacker plants a symlink at the victim's record name (as if seen in /dev/shm
    earlier) pointing at a file of the victim's: the victim's ranks skip it with one warning
    naming the symlink and its owner (the attacker), not the target's, meet under the next
    name, and leave the attacker's symlink and the victim's file as they were."""
    from conftest import Runner

    victim = Runner(chjoin, "user")
    tag = f"squat-{os.getpid()}"
    path = "/dev/shm/" + victim.shm_name(tag)
    target = attack.plant(f"/dev/shm/victim-file-{os.getpid()}", b"", "victim")
    os.symlink(target, path)
    os.chown(path, *attack.ids("attacker"), follow_symlinks=False)
    try:
        group = victim.group(["--join-ct=2", f"--join-tag={tag}", image, "--", "true"],
                             [{}, {}], timeout=20)
        assert group.returncodes == [0, 0], [r.stderr for r in group.ranks]
        for r in group.ranks:
            assert f"join: can't use {path}: owned by uid {attack.ids('attacker')[0]}, mode 777" \
                in r.stderr, r.stderr
        assert os.path.islink(path) and os.lstat(path).st_uid == attack.ids("attacker")[0]
        assert os.path.exists(target)
    finally:
        unlink(path, target)


# --- the prolog bounds what a job may ask of root -------------------------------------------

def test_a_comment_with_too_many_requests_fails_the_job(scratch, slurm_config, squashfs_file):
    """Each request is a child with a deadline: a comment naming more than 8 fails the job at
    once, with one line, rather than keeping the prolog busy for 9 deadlines."""
    job = next(JOBS)
    comment = " ".join(f"chjoin-image={squashfs_file}" for _ in range(9))
    done = attack.hook("prolog", job, "victim", "--config",
                       slurm_config(CHJOIN_STAGE_DIR=scratch / "stage"), "--comment", comment)
    assert (done.returncode, lines(done)) == (0, [
        f"chjoin prolog: job {job} on n1: cancelling the job: 9 chjoin-image=/chjoin-stage= "
        "requests in the job's comment; at most 8"])


def test_an_image_larger_than_the_site_stages_fails_the_job(scratch, slurm_config):
    """CHJOIN_STAGE_MAX_MB bounds what a user may make root's disk hold."""
    base = world_readable_dir("chjoin-sec-big-")
    try:
        (base / "tree").mkdir()
        (base / "tree" / "noise").write_bytes(os.urandom(3 << 20))
        big = attack._mksquashfs(base / "tree", base / "big.sqfs")
        job = next(JOBS)
        done = attack.hook("prolog", job, "victim", "--config",
                           slurm_config(CHJOIN_STAGE_DIR=scratch / "stage",
                                        CHJOIN_STAGE_MAX_MB=1),
                           "--comment", f"chjoin-stage={big}")
        size = os.stat(big).st_size / 2**20
        assert (done.returncode, lines(done)) == (0, [
            f"chjoin prolog: job {job} on n1: cancelling the job: can't stage {big}: "
            f"{size:.1f} MiB, more than this node stages (1 MiB)"])
        assert os.listdir(scratch / "stage" / str(job)) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_an_as_user_child_past_its_deadline_is_killed_even_if_its_pipe_stays_open():
    """runas.run_as: the child and a grandchild it left holding the result pipe open (a user's
    code would be all it takes) never keep root waiting past the deadline."""
    import time as clock

    from chjoin import runas

    def hold_pipe():
        if os.fork() == 0:
            clock.sleep(3)
            os._exit(0)
        clock.sleep(60)

    started = clock.monotonic()
    with pytest.raises(runas.Timeout):
        runas.run_as(*attack.ids("victim"), hold_pipe, deadline=clock.monotonic() + 1)
    assert clock.monotonic() - started < 2


def test_slurm_commands_the_prolog_cannot_run_fail_nothing(scratch, slurm_config):
    """Slurm's commands elsewhere than slurmd's PATH (or a slurmctld that does not answer): the
    prolog says so in one line and goes on, never a traceback, never a failing prolog (slurmd
    would drain the node)."""
    job = next(JOBS)
    done = attack.hook("prolog", job, "victim", "--config",
                       slurm_config(CHJOIN_STAGE_DIR=scratch / "stage"),
                       env={"PATH": "/nonexistent"})
    assert (done.returncode, lines(done)) == (0, [
        f"chjoin prolog: job {job} on n1: problem: can't run squeue: No such file or directory",
        f"chjoin prolog: job {job} on n1: node ready for containers"]), done.stderr


def test_a_name_with_a_newline_is_one_line_in_the_epilogs_log(scratch, slurm_config):
    """Names in /dev/shm are the users': one the epilog reports stays one ASCII line (no forged
    log lines, no encoding error)."""
    job = next(JOBS)
    uid = attack.ids("victim")[0]
    path = f"/dev/shm/chjoin-{uid}-x\nchjoin epilog: forged\udcff"
    attack.plant(path, b"", "attacker")
    try:
        done = attack.hook("epilog", job, "victim", "--config",
                           slurm_config(CHJOIN_STAGE_DIR=scratch / "stage"))
    finally:
        os.unlink(path)
    assert done.returncode == 0
    assert all(line.startswith(f"chjoin epilog: job {job} on n1: ") for line in lines(done)), \
        done.stdout
    assert any("left" in line and "\\n" in line for line in lines(done)), done.stdout
