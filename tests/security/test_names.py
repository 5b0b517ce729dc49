"""Attack 7 of issue 18: another user denies your join by taking its names first.

Root sets up; the victim (the test user) and the attacker (a second unprivileged user) act as
themselves. The attacker pre-creates, as themselves, every rendezvous name they can compute for
the victim's tag (the plain `/dev/shm/chjoin-<uid>-<tag>` and its semaphore: the layout is
public), as each kind of object a user can make in /dev/shm, and names seen in /dev/shm during an
earlier group of the same tag; the victim's job must still run, in one container, and leave
nothing of theirs behind. The attacker's objects are theirs to remove: untouched.
"""

import os
import re
import stat
import subprocess
import sys
import textwrap

import pytest


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: two users")

WHICH = ["--", "sh", "-c", "echo $(readlink /proc/self/ns/mnt)"]


def as_attacker(attacker, code, *args):
    """Run Python `code` (with posix_ipc) as the attacker; returns its stdout."""
    python = os.path.join(os.path.dirname(attacker.chjoin), "python")
    done = subprocess.run([python, "-I", "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, cwd="/", env=attacker.env(),
                          timeout=30, **attacker.identity_kwargs())
    assert done.returncode == 0, done.stderr
    return done.stdout


SQUAT = """
    import os, sys, posix_ipc
    kind, name, target = sys.argv[1], sys.argv[2], sys.argv[3]
    os.umask(0)
    record, semaphore = f"/dev/shm/{name}", f"/dev/shm/sem.{name}"
    if kind == "file":             # empty files, anybody may write them
        for path in (record, semaphore):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o666))
    elif kind == "ipc":            # the real objects, 0666
        posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o666, size=4096).close_fd()
        posix_ipc.Semaphore("/" + name, posix_ipc.O_CREX, mode=0o666).close()
    elif kind == "symlink":        # to a file the victim owns
        os.symlink(target, record)
        os.symlink(target, semaphore)
    elif kind == "fifo":
        os.mkfifo(record, 0o666)
        os.mkfifo(semaphore, 0o666)
    elif kind == "directory":
        os.mkdir(record, 0o777)
        os.mkdir(semaphore, 0o777)
"""


def plain_name(uid, tag):
    """The name anybody computes for a tag: the public layout (`chjoin.names.plain_name`)."""
    return f"chjoin-{uid}-{tag}"


def squatted(attacker, names, kind, target):
    for name in names:
        as_attacker(attacker, SQUAT, kind, name, target)
    return [p for n in names for p in (f"/dev/shm/{n}", f"/dev/shm/sem.{n}")]


def remove(paths):
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        elif os.path.lexists(path):
            os.unlink(path)


def victims_objects(victim):
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(("chjoin-", "sem.chjoin-"))
                  and os.lstat(f"/dev/shm/{n}").st_uid == victim.uid)


def assert_runs_in_one_container(victim, group, n):
    assert group.returncodes == [0] * n, [r.stderr for r in group.ranks if r.returncode]
    assert len({r.stdout for r in group.ranks}) == 1, [r.stdout for r in group.ranks]
    assert victims_objects(victim) == [], "the group left objects in /dev/shm"
    assert group.lingering == []


@pytest.fixture
def victims_file(victim):
    """A file the victim owns, for the attacker's symlinks to point at: it must not change."""
    path = f"/dev/shm/victims-own-{os.getpid()}"
    with open(path, "w") as f:
        f.write("the victim's\n")
    os.chown(path, victim.uid, victim.gid)
    os.chmod(path, 0o600)
    yield path
    os.unlink(path)


@pytest.mark.parametrize("kind", ["file", "ipc", "symlink", "fifo", "directory"])
def test_the_plain_names_taken_by_another_user_do_not_stop_a_join(victim, attacker, image,
                                                                     victims_file, kind):
    """The attacker takes the names of the victim's tag that anybody can compute: the plain
    ones of --join-tag and of the Slurm step's default tag."""
    tag, job = "squat", "4711"
    env = {"SLURM_JOB_ID": job, "SLURM_STEP_ID": "0", "SLURM_STEP_TASKS_PER_NODE": "3"}
    names = [plain_name(victim.uid, tag), plain_name(victim.uid, f"slurm.{job}.0")]
    made = squatted(attacker, names, kind, victims_file)
    try:
        tagged = victim.group(["--join-ct=3", f"--join-tag={tag}", image, *WHICH], [{}] * 3,
                              timeout=30)
        slurm = victim.group(["--join", image, *WHICH], [{}] * 3, env=env, timeout=30)
        still = [p for p in made if os.path.lexists(p)]
    finally:
        remove(made)
    assert_runs_in_one_container(victim, tagged, 3)
    assert_runs_in_one_container(victim, slurm, 3)
    assert still == made, "the attacker's objects are theirs: nothing of the victim's removes them"
    assert open(victims_file).read() == "the victim's\n"


def test_the_names_are_not_the_plain_ones_nor_computable_without_the_key(victim, attacker):
    """The names come from the tag and a key in a 0600 file of the victim's, in a directory only
    they could make: the attacker can't read it, and their own computation of the victim's name
    (the same code, their own key) gives another name."""
    names = victim.shm_names("squat")
    assert plain_name(victim.uid, "squat") not in names
    assert len(set(names)) == len(names) > 1
    assert all(n.startswith(f"chjoin-{victim.uid}-") for n in names)
    key = os.path.join(victim.home, ".local/state/chjoin/key")
    st = os.lstat(key)
    assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_size) == (victim.uid, 0o600, 32)
    guessed = as_attacker(attacker, """
        import sys
        from chjoin import names
        import os
        for home, uid in ((sys.argv[2], int(sys.argv[1])), (os.environ["HOME"], os.getuid())):
            key, _ = names.load_key({"HOME": home}, uid)
            found = names.names(int(sys.argv[1]), "squat", key)
            print(" ".join(found[i][1:] for i in range(len(found))))
        """, victim.uid, victim.home).split()
    assert not set(guessed) & set(names)


def test_names_seen_in_an_earlier_group_and_taken_do_not_stop_the_next(victim, attacker, image):
    """The attacker watches /dev/shm while a group of the victim's runs, and takes every name
    it showed (record and semaphore, 0666) once the group is over: the next group of the same
    tag meets under a name nobody has seen."""
    args = ["--join-ct=2", "--join-tag=again", image, "--", "sh", "-c", "sleep 1; echo ok"]
    seen = []
    watch = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, time
        seen = set()
        end = time.monotonic() + 20
        while time.monotonic() < end:
            seen |= {{n for n in os.listdir("/dev/shm") if n.startswith("chjoin-{victim.uid}-")}}
            if seen and not [n for n in os.listdir("/dev/shm") if n in seen]:
                break
            time.sleep(0.005)
        print(" ".join(sorted(seen)))
        """)], stdout=subprocess.PIPE, text=True, **attacker.identity_kwargs())
    first = victim.group(args, [{}] * 2, timeout=30)
    seen = watch.communicate(timeout=30)[0].split()
    assert first.returncodes == [0, 0] and seen
    made = squatted(attacker, seen, "ipc", "")
    try:
        second = victim.group(args, [{}] * 2, timeout=30)
    finally:
        remove(made)
    assert second.returncodes == [0, 0], [r.stderr for r in second.ranks]
    assert victims_objects(victim) == []


def stopped(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "T"


def test_a_semaphore_taken_the_moment_the_record_appears_does_not_stop_a_join(victim, attacker,
                                                                              image):
    """The attacker sees the victim's first record appear and makes its semaphore (0666) before
    the victim's rank does (it is stopped between the two, $CHJOIN_TEST_STOP): the ranks poll
    the record instead of waiting on it, and join; the attacker's semaphore stays theirs."""
    import signal
    import time

    args = [victim.chjoin, "--join-ct=3", "--join-tag=race", str(image), *WHICH]
    first = subprocess.Popen(args, env=victim.env({"CHJOIN_TEST_STOP": "any:record"}), cwd="/",
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             **victim.identity_kwargs())
    deadline = time.monotonic() + 10
    while not stopped(first.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    [record] = [n for n in os.listdir("/dev/shm") if n.startswith(f"chjoin-{victim.uid}-")]
    as_attacker(attacker, """
        import os, sys, posix_ipc
        os.umask(0)
        posix_ipc.Semaphore("/" + sys.argv[1], posix_ipc.O_CREX, mode=0o666).close()
        """, record)
    os.kill(first.pid, signal.SIGCONT)
    try:
        others = victim.group(args[1:], [{}] * 2, timeout=30)
        out, err = first.communicate(timeout=30)
    finally:
        os.unlink(f"/dev/shm/sem.{record}")
    assert first.returncode == 0, err
    assert others.returncodes == [0, 0], [r.stderr for r in others.ranks]
    assert len({out} | {r.stdout for r in others.ranks}) == 1
    assert f"another user holds this group's name; this rank polls the record instead" in err
    assert victims_objects(victim) == []


def test_without_a_private_place_for_the_key_the_plain_names_are_used_and_said(victim, image):
    """No $HOME of the victim's (here: one that does not exist) and no $XDG_RUNTIME_DIR: the
    names are the plain ones, which -v says, and the join works as before."""
    env = {"HOME": "/nonexistent", "XDG_RUNTIME_DIR": None}
    assert victim.shm_names("plain", env) == [plain_name(victim.uid, "plain")]
    group = victim.group(["-v", "--join-ct=2", "--join-tag=plain", image, *WHICH], [{}] * 2,
                         env=env, timeout=30)
    assert group.returncodes == [0, 0], [r.stderr for r in group.ranks]
    for rank in group.ranks:
        assert (f"join: no private place for the key of the rendezvous names (/nonexistent: No "
                f"such file or directory): using the plain name /{plain_name(victim.uid, 'plain')}"
                ", which another user can take first") in rank.stderr, rank.stderr
    assert victims_objects(victim) == []


@pytest.fixture
def runtime_dir(victim):
    """A runtime directory as logind makes /run/user/UID: the victim's, 0700."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="chjoin-run-")
    os.chown(path, victim.uid, victim.gid)
    os.chmod(path, 0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_private_runtime_directory_keeps_the_key(victim, image, runtime_dir):
    """With a $XDG_RUNTIME_DIR of the victim's, 0700, ranks read the key there: a copy of the
    one in $HOME (made there first if missing), so a step without it computes the same names."""
    runtime = runtime_dir
    env = {"XDG_RUNTIME_DIR": runtime}
    group = victim.group(["-v", "--join-ct=2", "--join-tag=runtime", image, *WHICH], [{}] * 2,
                         env=env, timeout=30)
    assert group.returncodes == [0, 0], [r.stderr for r in group.ranks]
    home_key = f"{victim.home}/.local/state/chjoin/key"
    for rank in group.ranks:       # $HOME's key, or its copy once made
        assert re.search(f"join: rendezvous names keyed by ({runtime}/chjoin/home.key|"
                         f"{home_key})", rank.stderr), rank.stderr
    again = victim.group(["-v", "--join-ct=2", "--join-tag=runtime-again", image, *WHICH],
                         [{}] * 2, env=env, timeout=30)   # a later group reads the copy
    assert again.returncodes == [0, 0], [r.stderr for r in again.ranks]
    for rank in again.ranks:
        assert f"join: rendezvous names keyed by {runtime}/chjoin/home.key" in rank.stderr
    st = os.lstat(f"{runtime}/chjoin/home.key")
    assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_size) == (victim.uid, 0o600, 32)
    with open(f"{runtime}/chjoin/home.key", "rb") as here, \
            open(home_key, "rb") as home:
        assert here.read() == home.read()
    assert victim.shm_names("runtime", env) == victim.shm_names("runtime")
