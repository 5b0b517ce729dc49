"""User and mount namespaces: creating the nested pair a container lives in.

Two user namespaces, as ch-run 0.45 has them: the outer one maps 0 to the host's effective ids
(so that mounting, and later FUSE, work unprivileged) and owns the mount namespace; the inner one
maps the container's uid and gid onto that 0. `setgroups` is denied in both.
"""

import os

from chjoin import libc
from chjoin.log import Fatal, checkpoint


def _write(name, text, proc):
    """Write `text` to /proc/self/`name`, through `proc`, a descriptor of a /proc."""
    fd = os.open(f"self/{name}", os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _map_ids(uid, outer_uid, gid, outer_gid, proc=None):
    """Map `uid`/`gid` of the namespace we just entered onto the parent's ids, one each; through
    `proc` (a descriptor of /proc), else the /proc we see."""
    opened = proc is None
    if opened:
        proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _write("uid_map", f"{uid} {outer_uid} 1\n", proc)
        _write("setgroups", "deny\n", proc)
        _write("gid_map", f"{gid} {outer_gid} 1\n", proc)
    finally:
        if opened:
            os.close(proc)


def enter_outer(host_uid, host_gid):
    """Unshare a user + mount namespace in which we are root, mapped onto the host's ids."""
    try:
        libc.unshare(libc.CLONE_NEWUSER | libc.CLONE_NEWNS)
        _map_ids(0, host_uid, 0, host_gid)
    except OSError as e:
        hint = " (is the launcher multi-threaded?)" if e.errno == 22 else ""
        raise Fatal(f"can't create user+mount namespaces: {e.strerror}{hint}") from None


def enter_inner(uid, gid, proc):
    """Unshare the inner user namespace, where we are `uid`:`gid`, mapped onto the outer root,
    with a mount namespace of its own, as ch-run does: the container's root user may then mount
    (a tmpfs, FUSE), while the mounts made so far stay locked as they are. The maps are written
    through `proc`, a descriptor of /proc taken before the container's binds (whose /proc may
    be the user's: `-b DIR:/proc`)."""
    try:
        libc.unshare(libc.CLONE_NEWUSER | libc.CLONE_NEWNS)
        _map_ids(uid, 0, gid, 0, proc)
    except OSError as e:
        raise Fatal(f"can't create inner user namespace for {uid}:{gid}: {e.strerror}") from None


# Joining: processes are named by pid and start time, and entered through a pidfd, so that a
# recycled pid can never put a rank into the wrong container.

def start_time(pid):
    """The start time of process `pid` (clock ticks since boot), or 0 if it is dead or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return 0
    return 0 if fields[0] in (b"Z", b"X") else int(fields[19])


def alive(pid, start):
    """Whether process `pid` is the one that started at `start`, and still runs."""
    return pid > 0 and start_time(pid) == start


def inodes():
    """This process's user and mount namespace inode numbers."""
    return (os.stat("/proc/self/ns/user").st_ino, os.stat("/proc/self/ns/mnt").st_ino)


def dismiss(pid, start, wake=False):
    """SIGTERM process `pid` if it is still the one that started at `start`; with `wake`, then
    SIGCONT, so that a stopped one acts on it (chjoinctl gc)."""
    try:
        fd = libc.pidfd_open(pid)
    except OSError:
        return
    try:
        if alive(pid, start):
            libc.pidfd_send_signal(fd, 15)
            if wake:
                libc.pidfd_send_signal(fd, 18)
    except OSError:
        pass
    finally:
        os.close(fd)


def join(keepers, expected_inodes, log):
    """Enter the user + mount namespaces of the first live process in `keepers` [(pid, start)],
    and check that they are the ones `expected_inodes` names. Returns the pid joined."""
    for pid, start in keepers:
        try:
            fd = libc.pidfd_open(pid)
        except OSError:
            continue
        try:
            if not alive(pid, start):
                continue
            log.debug(f"join: entering the container through pid {pid}")
            libc.setns(fd, libc.CLONE_NEWUSER | libc.CLONE_NEWNS)
        except OSError as e:
            if e.errno == 22:
                raise Fatal("join: can't setns(2) into the container: EINVAL "
                            "(is the launcher multi-threaded?)") from None
            continue
        finally:
            os.close(fd)
        if expected_inodes and inodes() != tuple(expected_inodes):
            raise Fatal(f"join: pid {pid} is not in the group's container (namespace inodes "
                        f"{inodes()} instead of {tuple(expected_inodes)})")
        return pid
    raise Fatal("join: the container is gone: none of its processes is left to join")


def join_pid(pid):
    """--join-pid: enter the user + mount namespaces of process `pid`, no questions asked."""
    try:
        fd = libc.pidfd_open(pid)
    except OSError as e:
        if e.errno == 3:        # ESRCH, ch-run 0.45's words
            raise Fatal(f"join: no PID {pid}: /proc/{pid}/ns/user not found") from None
        raise Fatal(f"join: can't open /proc/{pid}/ns/user: {e.strerror}") from None
    try:
        libc.setns(fd, libc.CLONE_NEWUSER | libc.CLONE_NEWNS)
    except OSError as e:
        raise Fatal(f"join: can't open /proc/{pid}/ns/user: {_open_error(pid, e)}") from None
    finally:
        os.close(fd)


def _open_error(pid, err):
    """ch-run opens /proc/PID/ns/user and names that open's error (EACCES for another user's
    process: "Permission denied"), where setns through our pidfd says EPERM: its words."""
    try:
        os.close(os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as e:
        return e.strerror
    return err.strerror


def tmpfs_user_xattrs():
    """--feature=tmpfs-xattrs: whether a tmpfs mounted in a user namespace takes `user.*`
    xattrs (Linux 6.6), tried in a child: -W needs them for overlayfs whiteouts."""
    child = os.fork()
    if child == 0:
        ok = False
        try:
            enter_outer(os.geteuid(), os.getegid())
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            libc.mount("tmpfs", "/tmp", "tmpfs", 0, "size=64k")
            with open("/tmp/x", "w"):
                pass
            os.setxattr("/tmp/x", "user.chjoin", b"1")
            ok = True
        except BaseException:
            pass
        os._exit(0 if ok else 1)
    return os.waitpid(child, 0)[1] == 0


HOLDER_NAME = "chjoin-holder"     # its `comm`, by which slurm/epilog finds what a job left


def spawn_holder(hold, clock, blocked=()):
    """Fork the holder: a process that stays in our namespaces for as long as `hold()` runs. It
    is a grandchild, reparented away from the command we exec, holds no stdio, and reports its
    `clock` as the holder's. Returns its (pid, start time).

    The signals `blocked` are blocked from before the fork until `hold()` unblocks them where
    it can act on them: a SIGTERM that arrives as the holder starts must end its group, not
    kill it through a handler it inherited from us."""
    import _signal as signal
    import struct

    read_end, write_end = os.pipe()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked) if blocked else None
    child = -1
    try:
        child = os.fork()
    finally:
        if mask is not None and child != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if child == 0:
        try:
            os.close(read_end)
            holder = os.fork()
            if holder == 0:
                os.close(write_end)
                _hold(hold, clock)
            os.write(write_end, struct.pack("<i", holder))
        finally:
            os._exit(0)
    os.close(write_end)
    data = os.read(read_end, 4)
    os.close(read_end)
    os.waitpid(child, 0)
    pid = struct.unpack("<i", data)[0]
    return pid, start_time(pid)


def _hold(hold, clock):
    clock.holding()
    try:
        libc.set_name(HOLDER_NAME)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        checkpoint("holder", "forked")      # a signal now waits (`blocked`) for hold()
        hold()
    except BaseException:
        pass
    clock.done("hold")
    clock.report()
    os._exit(0)
