"""Running as the owner of a user's objects: what runs as root (the Slurm prolog and epilog,
`chjoinctl` as root) does everything it does to a user's records, semaphores, staged files and
holders in a child that has dropped to the owner's ids, so that the kernel's own permission
checks decide what may be read, signalled or removed.

`run_as` forks that child, which drops its supplementary groups, gid and uid (all three of
each), closes every descriptor it was not asked to keep (its stdio is /dev/null, in a session of its own), does the work and sends back a small
result through a pipe; the parent waits for it with a deadline and kills it past that. The
child is not dumpable once its ids changed (the kernel's rule), so the owner can't ptrace it.

`signal_holder` signals a pid named in a record only through a pidfd, and only after checking
that the process is a `chjoin-holder` of that user, started at the recorded time, in the
group's namespaces. Nothing here is on a rank's path.
"""

import json
import os
import select
import signal
import time

from chjoin import libc, ns

RESULT_MAX = 1 << 20      # bytes a child may send back; more is a broken child


class Timeout(Exception):
    """The child ran past its deadline and was killed."""


class ChildFailed(Exception):
    """The child died, sent garbage, or raised: the message says which."""


def ids_of(uid, fallback_gid=None):
    """(gid, groups) for `uid` from the user database; without an entry, (`fallback_gid` or
    `uid`, []): a uid with no name still gets no group it doesn't own."""
    import pwd
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return (uid if fallback_gid is None else fallback_gid), []
    try:
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError:
        groups = [entry.pw_gid]
    return entry.pw_gid, groups


def drop(uid, gid, groups=()):
    """Become `uid`:`gid` with `groups`, for good (real, effective and saved ids); refuses to
    return unless the drop took."""
    same = os.getresuid() == (uid,) * 3 and os.getresgid() == (gid,) * 3
    if os.geteuid() == 0 and not same:     # root staying root (chjoinctl check) keeps all
        os.setgroups(list(groups))
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PermissionError(f"can't become uid {uid} gid {gid} (running as uid {os.getuid()})")


def run_as(uid, gid, fn, *args, deadline, groups=(), keep_fds=()):
    """`fn(*args)` in a child running as `uid`:`gid` (root drops to them; anyone else may only
    run as themselves); its JSON-able result. `deadline` is a time.monotonic() by which the
    child must be done: past it the child is SIGKILLed and `Timeout` raised. `keep_fds` stay
    open in the child (everything else of the parent's is closed there). Raises `ChildFailed`
    when the child raised (its message) or died."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:                                         # the child
        code = 1
        try:
            os.close(read_end)
            keep = sorted({0, 1, 2, write_end, *keep_fds})
            low = 0
            for fd in keep:
                if low < fd:            # closerange(n, n) closes everything (close_range)
                    os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, max(1 << 16, os.sysconf("SC_OPEN_MAX")))
            # nothing of root's terminal: the owner could read it, or TIOCSTI into it, through
            # a program the child execs as them (dumpable again after exec: mksquashfs)
            os.setsid()
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                if fd not in keep_fds:
                    os.dup2(null, fd)
            if null > 2:
                os.close(null)
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
                signal.signal(s, signal.SIG_DFL)
            drop(uid, gid, groups)
            try:
                message = {"ok": fn(*args)}
            except Exception as e:
                message = {"error": describe(e)}
            _write_all(write_end, json.dumps(message).encode())
            code = 0
        except BaseException:
            pass
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        data = _read_until(read_end, pid, deadline)
    finally:
        os.close(read_end)
    status = _reap(pid, time.monotonic() + 5)
    if not data:
        raise ChildFailed(f"the child as uid {uid} died ({_status(status)})")
    try:
        message = json.loads(data)
    except ValueError:
        raise ChildFailed(f"the child as uid {uid} sent back garbage") from None
    if "error" in message:
        raise ChildFailed(str(message["error"]))
    return message.get("ok")


def describe(e):
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e) or type(e).__name__


def _status(status):
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit {os.WEXITSTATUS(status)}"


def _reap(pid, deadline):
    """The wait status of child `pid` once it is gone, or 0 when it is still there at `deadline`
    (killed but stuck where SIGKILL can't reach it, as in a hard NFS mount: it is left to init,
    and we go on rather than hang with it)."""
    delay = 0.0002
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            return 0
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _kill(pid):
    """SIGKILL child `pid` and its process group (it leads one once it ran setsid): what it ran
    as the owner goes with it."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def _read_until(fd, pid, deadline):
    """Everything the child writes until it closes the pipe; SIGKILL it (and reap it) past
    `deadline` or past RESULT_MAX bytes."""
    chunks, size = [], 0
    while True:
        left = deadline - time.monotonic()
        ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
        if not ready:
            _kill(pid)
            _reap(pid, time.monotonic() + 5)
            raise Timeout("still running after its deadline: killed")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > RESULT_MAX:
            _kill(pid)
            _reap(pid, time.monotonic() + 5)
            raise ChildFailed("the child sent back too much")


# --- holders --------------------------------------------------------------------------------

def proc_uids(pid):
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Uid:"):
                return [int(x) for x in line.split()[1:5]]
    return []


def holder_problem(pid, start, uid, inodes):
    """Why process `pid` is not the `chjoin-holder` of `uid` that started at `start` in
    namespaces `inodes` (user, mount); "" when it is. Reads /proc only."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            comm = f.read().strip().decode(errors="replace")
        if comm != ns.HOLDER_NAME:
            return f"pid {pid} is {comm!r}, not {ns.HOLDER_NAME}"
        uids = proc_uids(pid)
        if uids != [uid] * 4:
            return f"pid {pid} runs as uids {uids}, not {uid}"
        if not ns.alive(pid, start):
            return f"pid {pid} is not the process the record names (start time)"
        if inodes is not None:
            found = (os.stat(f"/proc/{pid}/ns/user").st_ino, os.stat(f"/proc/{pid}/ns/mnt").st_ino)
            if found != tuple(inodes):
                return f"pid {pid} is not in the group's namespaces ({found}, not {tuple(inodes)})"
    except OSError as e:
        return f"pid {pid}: {e.strerror}"
    return ""


def signal_holder(pid, start, uid, inodes, signals):
    """Send `signals` to holder `pid` through a pidfd opened first, then checked
    (`holder_problem`, and that the pidfd's process still lives, so /proc was its); "" when
    sent, else why not (nothing was sent)."""
    if not 0 < pid < (1 << 22):
        return f"pid {pid} out of range"
    try:
        fd = libc.pidfd_open(pid)
    except OSError as e:
        return f"pid {pid}: {e.strerror}"
    try:
        problem = holder_problem(pid, start, uid, inodes)
        if problem:
            return problem
        libc.pidfd_send_signal(fd, 0)
        for s in signals:
            libc.pidfd_send_signal(fd, s)
    except OSError as e:
        return f"pid {pid}: {e.strerror}"
    finally:
        os.close(fd)
    return ""
