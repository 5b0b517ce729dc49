"""pidfd_getfd(2) between two ranks: how UCX's CUDA-VMM path (POSIX-fd memory handles) and Intel
Level Zero (through UMF/oneCCL) pass GPU memory handles between processes of a node. The kernel
checks PTRACE_MODE_ATTACH_REALCREDS, the check that also decides CMA (process_vm_readv), so no
GPU is needed to see which rank layouts allow it: on the host, in one joined container, or in
separate containers (sibling user namespaces).

Standalone, two processes that meet in a directory both see (the host's /tmp is bound in):

    python3 pidfd_probe.py serve DIR     # rank 1: a memfd holding a secret; waits
    python3 pidfd_probe.py fetch DIR     # rank 0: pidfd_open + pidfd_getfd, reads the secret

`fetch` prints one JSON line: {"pidfd_getfd": "ok" or the errno name, "us": microseconds per
pidfd_open + pidfd_getfd + close (median of REPS), "reps": REPS}. bench/mpi_probe.py uses
`fetch_from` between two MPI ranks; bench.py reports it beside CMA.
"""

import ctypes
import errno
import json
import os
import sys
import time

SECRET = b"chjoin-pidfd-probe"
SYS_PIDFD_GETFD = 438          # the same on every architecture Linux numbers in common (5.6)
REPS = 1000


def pidfd_getfd(pidfd, fd):
    libc = ctypes.CDLL(None, use_errno=True)
    got = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return got


def secret_fd():
    """A memfd holding SECRET: the stand-in for an exported GPU memory handle."""
    fd = os.memfd_create("chjoin-pidfd-probe", 0)
    os.write(fd, SECRET)
    return fd


def fetch_from(pid, fd, reps=REPS):
    """(outcome, microseconds per call or None): take descriptor `fd` of process `pid` and check
    it is the memfd with SECRET, then time `reps` more takes."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        return f"pidfd_open: {errno.errorcode.get(e.errno, e.errno)}", None
    try:
        try:
            mine = pidfd_getfd(pidfd, fd)
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno)), None
        data = os.pread(mine, len(SECRET), 0)
        os.close(mine)
        if data != SECRET:
            return "wrong data", None
        took = []
        for _ in range(reps):
            start = time.perf_counter()
            p = os.pidfd_open(pid)
            os.close(pidfd_getfd(p, fd))
            os.close(p)
            took.append(time.perf_counter() - start)
        took.sort()
        return "ok", round(took[len(took) // 2] * 1e6, 2)
    finally:
        os.close(pidfd)


def serve(directory, timeout=30):
    """Rank 1: publish pid and fd in DIR/addr, wait until DIR/done exists (or timeout)."""
    fd = secret_fd()
    tmp = os.path.join(directory, f"addr.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {fd}\n")
    os.rename(tmp, os.path.join(directory, "addr"))
    deadline = time.monotonic() + timeout
    while not os.path.exists(os.path.join(directory, "done")) and time.monotonic() < deadline:
        time.sleep(0.01)


def fetch(directory, reps=REPS, timeout=30):
    """Rank 0: wait for DIR/addr, take the descriptor, print the JSON line, write DIR/done."""
    path = os.path.join(directory, "addr")
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit("pidfd_probe: no rank served")
        time.sleep(0.01)
    with open(path) as f:
        pid, fd = map(int, f.read().split())
    outcome, us = fetch_from(pid, fd, reps)
    print(json.dumps({"pidfd_getfd": outcome, "us": us, "reps": reps}), flush=True)
    open(os.path.join(directory, "done"), "w").close()


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("serve", "fetch"):
        raise SystemExit("usage: pidfd_probe.py serve|fetch DIR [REPS]")
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        fetch(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else REPS)
