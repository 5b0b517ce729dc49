"""The only ctypes in the tree: thin wrappers over the system calls Python's `os` lacks.

Each wrapper makes one call and raises `OSError(errno, strerror, path)` when it fails; none of
them decides anything. Loaded on every launch, so it binds the C library once and nothing more.
"""

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# <sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000

# <sys/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MNT_DETACH = 0x2

# <linux/mount.h>, new mount API
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4

# <sys/prctl.h>
PR_SET_NAME = 15
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

# x86_64 and aarch64 share these numbers (the generic table).
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine, 155)
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_PIDFD_SEND_SIGNAL = 424
_SYS_PIDFD_OPEN = 434


def _check(result, path=None):
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return result


def _bytes(s):
    return None if s is None else os.fsencode(s)


def mount(source, target, fstype=None, flags=0, data=None):
    """mount(2); `source`, `fstype` and `data` may be None."""
    _check(_libc.mount(_bytes(source), _bytes(target), _bytes(fstype),
                       ctypes.c_ulong(flags), _bytes(data)), target)


def clone_tree(path):
    """open_tree(2) with OPEN_TREE_CLONE|AT_RECURSIVE: a detached copy of the mounts at `path`.

    Unlike a later bind of `path`, the copy keeps showing what was there when it was taken, even
    after something is mounted over `path`.
    """
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
    return _check(_libc.syscall(_SYS_OPEN_TREE, -100, _bytes(path), flags), path)


def attach_tree(tree_fd, target):
    """move_mount(2) a detached tree from `clone_tree` onto `target`."""
    _check(_libc.syscall(_SYS_MOVE_MOUNT, tree_fd, b"", -100, _bytes(target),
                         MOVE_MOUNT_F_EMPTY_PATH), target)


def umount2(target, flags=0):
    _check(_libc.umount2(_bytes(target), flags), target)


def pivot_root(new_root, put_old):
    _check(_libc.syscall(_SYS_PIVOT_ROOT, _bytes(new_root), _bytes(put_old)), new_root)


def unshare(flags):
    _check(_libc.unshare(flags))


def setns(fd, nstype=0):
    _check(_libc.setns(fd, nstype))


def pidfd_open(pid):
    """A file descriptor that names process `pid` for as long as it lives, and never another."""
    return _check(_libc.syscall(_SYS_PIDFD_OPEN, pid, 0))


def pidfd_send_signal(pidfd, signal):
    _check(_libc.syscall(_SYS_PIDFD_SEND_SIGNAL, pidfd, signal, None, 0))


def no_new_privs():
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))


def set_name(name):
    """This process's name (`comm`, 15 bytes at most): what ps, pgrep and the epilog see."""
    _check(_libc.prctl(PR_SET_NAME, ctypes.c_char_p(_bytes(name)), 0, 0, 0))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_filter(program):
    """Install the classic BPF `program` (bytes of `struct sock_filter[]`) as this thread's
    seccomp filter: prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER), which is seccomp(2)'s
    SECCOMP_SET_MODE_FILTER with no flags, without a per-architecture syscall number. Needs
    no_new_privs (or CAP_SYS_ADMIN); survives execve."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0))


def fake_mknod_works():
    """ch-run 0.45's self-test of its filter: mknodat(-101, ".", S_IFCHR|0600, makedev(1,3)),
    which the kernel refuses (EBADF) and the filter makes "succeed"."""
    return _libc.mknodat(-101, b".", ctypes.c_uint(0o20600), ctypes.c_uint64(0x103)) == 0
