"""What a hostile user does to chjoin's root-run parts, as plain helpers: forge records (the
layout and CRC are public), plant files and symlinks, start processes worth protecting, and run
the prolog and epilog as slurmd would (root, SLURM_* in the environment, nothing else)."""

import os
import pwd
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chjoin import ns, record
from chjoin.record import READY, WAITING, Group

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(Path(sys.executable))


def ids(who):
    """(uid, gid) of "root", "victim" (chjoin-test) or "attacker" (chjoin-attacker)."""
    from conftest import ATTACKER_USER, TEST_USER
    if who == "root":
        return 0, 0
    entry = pwd.getpwnam(ATTACKER_USER if who == "attacker" else TEST_USER)
    return entry.pw_uid, entry.pw_gid


def as_who(who):
    uid, gid = ids(who)
    return {} if uid == 0 else {"user": uid, "group": gid, "extra_groups": []}


def plant(path, data, who, mode=0o600):
    """Write `data` to `path` as `who` would have (their file, `mode`)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fchown(fd, *ids(who))
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return path


def record_bytes(tag, groups):
    """A whole, well-formed record holding `groups` of `tag`, as a rank would write it."""
    buf = bytearray(record.SIZE)
    record.store(buf, tag, groups)
    return bytes(buf)


def over_group(holder_pid, inodes=(1, 1)):
    """A group that is over (its deadline long past, its one rank long dead) whose holder is
    `holder_pid`: whoever sweeps it dismisses that holder."""
    g = Group(expected=1, deadline=0.0, slots=[[4194300, WAITING, 1]])
    g.state, g.holder, g.inodes = READY, (holder_pid, ns.start_time(holder_pid)), inodes
    return g


def bait(who, comm="chjoin-holder"):
    """A process of `who` worth protecting, named `comm` (by prctl, as the holder names
    itself): it exits on SIGTERM, SIGKILL or anything else that reaches it. Returns the Popen,
    once it has renamed itself."""
    code = ("import ctypes, time; ctypes.CDLL(None).prctl(15, %r.encode(), 0, 0, 0); "
            "print('ready', flush=True); time.sleep(300)" % comm)
    proc = subprocess.Popen([PYTHON, "-I", "-c", code], stdout=subprocess.PIPE, cwd="/",
                            start_new_session=True, **as_who(who))
    assert proc.stdout.readline() == b"ready\n"
    return proc


def inodes_of(pid):
    return (os.stat(f"/proc/{pid}/ns/user").st_ino, os.stat(f"/proc/{pid}/ns/mnt").st_ino)


def untouched(proc):
    """Whether bait `proc` is still running, never signalled (not even stopped)."""
    time.sleep(0.2)
    if proc.poll() is not None:
        return False
    with open(f"/proc/{proc.pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] in ("S", "R")


def end(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def slurm_env(job, who, node="n1"):
    uid, gid = ids(who)
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_JOB_ID": str(job),
            "SLURM_JOB_UID": str(uid), "SLURM_JOB_GID": str(gid),
            "SLURM_JOB_USER": pwd.getpwuid(uid).pw_name, "SLURMD_NODENAME": node}


def hook(role, job, who, *options, env=None, timeout=60, cwd="/"):
    """chjoin's prolog or epilog (`role`) as slurmd runs it for `job` of `who`: as root, with
    slurmd's SLURM_* variables only (and `env`); the CompletedProcess."""
    return subprocess.run([PYTHON, "-I", "-m", "chjoin.slurm", role, *options],
                          env={**slurm_env(job, who), **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def wrapper(role, job, who, config, env=None, cwd="/", timeout=60):
    """slurm/prolog or slurm/epilog itself (the shell wrapper slurmd runs), with `config`."""
    return subprocess.run(["sh", str(REPO / "slurm" / role), config],
                          env={**slurm_env(job, who), **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def gc(chjoinctl, *args, timeout=60):
    return subprocess.run([chjoinctl, "gc", *args], capture_output=True, text=True, cwd="/",
                          timeout=timeout, env={"PATH": "/usr/bin:/bin"})


def truncating(path, who, data, seconds):
    """A process of `who` that keeps truncating its record `path` to nothing and writing it
    back whole, for `seconds`: what root reads of it may be any size at any moment."""
    code = ("import os, sys, time\n"
            "data = sys.stdin.buffer.read()\n"
            f"fd = os.open({path!r}, os.O_RDWR)\n"
            f"end = time.monotonic() + {seconds}\n"
            "while time.monotonic() < end:\n"
            "    os.ftruncate(fd, 0)\n"
            "    os.pwrite(fd, data[:len(data) // 2], 0)\n"
            "    os.ftruncate(fd, 100)\n"
            "    os.pwrite(fd, data, 0)\n")
    proc = subprocess.Popen([PYTHON, "-I", "-c", code], stdin=subprocess.PIPE, cwd="/",
                            **as_who(who))
    proc.stdin.write(data)
    proc.stdin.close()
    return proc


def shm_name(who, rest):
    return f"/dev/shm/chjoin-{ids(who)[0]}-{rest}"


def struct_group(expected, nslots, extra=b""):
    """The bytes of a record whose one group claims `nslots` slots of `expected` (CRC right):
    what a user writes to make a parser index past the end or an empty list."""
    head = struct.Struct(f"<8sIIII{256}s")
    group = struct.Struct("<IIiqIQQQ")
    body = group.pack(READY, expected, nslots, 0, 0, 0, 0, 0) + bytes(4 * 256 + 512) + extra
    data = bytearray(head.size) + body
    head.pack_into(data, 0, record.MAGIC, 0, record.VERSION, len(data), 1, b"slurm.77.0")
    from binascii import crc32
    struct.pack_into("<I", data, 8, crc32(data[12:]))
    buf = bytearray(record.SIZE)
    buf[8:8 + len(data)] = data
    return bytes(buf)


# --- fixtures both test files use ------------------------------------------------------

@pytest.fixture(scope="module")
def squashfs_file():
    base = _readable_dir("chjoin-sec-sqfs-")
    tree = base / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "image-file").write_text("from the image\n")
    yield _mksquashfs(tree, base / "img.sqfs")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def stuck_path(squashfs_file):
    """A path on a FUSE mount whose daemon is stopped: every access to it blocks (killably),
    as on a hung network file system."""
    mnt = _readable_dir("chjoin-stuck-")
    daemon = subprocess.Popen(["squashfuse", "-f", "-o", "allow_other", str(squashfs_file),
                               str(mnt)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.ismount(mnt):
        assert time.monotonic() < deadline and daemon.poll() is None, "squashfuse didn't mount"
        time.sleep(0.05)
    daemon.send_signal(signal.SIGSTOP)
    yield mnt / "etc" / "image-file"
    daemon.send_signal(signal.SIGCONT)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    daemon.terminate()
    daemon.wait()
    shutil.rmtree(mnt, ignore_errors=True)




def _readable_dir(prefix):
    from conftest import world_readable_dir
    return world_readable_dir(prefix)


def _mksquashfs(tree, path):
    from conftest import mksquashfs
    return mksquashfs(tree, path)
