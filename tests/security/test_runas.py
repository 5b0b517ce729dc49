"""Root's as-owner children (chjoin.runas) and names anybody can make in /dev/shm: what root runs
as a user keeps nothing of root's terminal and dies with its whole process group at its
deadline; a name that only looks like a uid never stops root's cleanup."""

import os
import subprocess
import time

import pytest

import attack

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root's children")


def _inside():
    """What the child sees of its stdio and session."""
    import os
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
        tty = True
    except OSError:
        tty = False
    return {"stdio": [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)],
            "leader": os.getsid(0) == os.getpid(), "tty": tty}


def _spawn_and_hang(path):
    """Start a grandchild as the owner (as `save` runs mksquashfs), record its pid, hang."""
    import subprocess
    import time
    child = subprocess.Popen(["sleep", "600"])
    with open(path, "w") as f:
        f.write(str(child.pid))
    time.sleep(600)


def test_an_as_owner_child_has_no_terminal_of_roots():
    """The child's stdin, stdout and stderr are /dev/null and it leads a session of its own
    (no controlling terminal), so nothing it execs as the owner can read root's terminal or push
    input into it (TIOCSTI)."""
    from chjoin import runas
    uid, gid = attack.ids("victim")
    seen = runas.run_as(uid, gid, _inside, deadline=time.monotonic() + 20)
    assert seen == {"stdio": ["/dev/null"] * 3, "leader": True, "tty": False}


def test_an_as_owner_child_past_its_deadline_takes_what_it_started_with_it():
    """Killed at its deadline, the child's process group goes too: no program it ran as the
    owner lives on."""
    from chjoin import runas
    uid, gid = attack.ids("victim")
    import shutil
    import tempfile
    from pathlib import Path
    place = Path(tempfile.mkdtemp(prefix="chjoin-runas-", dir="/tmp"))
    os.chown(place, uid, gid)
    record = place / "pid"
    with pytest.raises(runas.Timeout):
        runas.run_as(uid, gid, _spawn_and_hang, str(record), deadline=time.monotonic() + 3)
    pid = int(record.read_text())
    shutil.rmtree(place)
    for _ in range(100):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the owner's grandchild {pid} outlived the deadline")


@pytest.mark.parametrize("name", ["chjoin-\u00b2-x", "chjoin-\u0661\u0662-x", "sem.chjoin-\u00b9-y"])
def test_a_name_with_other_digits_does_not_stop_gc_or_ps(chjoin, name):
    """`touch /dev/shm/chjoin-²-x` (anybody can): `str.isdigit` takes it, `int` does not. gc and
    ps as root go on (exit 0), and the file is left alone."""
    ctl = os.path.join(os.path.dirname(chjoin), "chjoinctl")
    path = f"/dev/shm/{name}"
    attack.plant(path, b"", "attacker")
    try:
        for argv in ([ctl, "gc"], [ctl, "ps"]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, (argv, done.stderr)
            assert "Traceback" not in done.stderr
        assert os.path.exists(path)
    finally:
        os.unlink(path)
