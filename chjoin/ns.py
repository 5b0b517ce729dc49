"""User and mount namespaces: creating the nested pair a container lives in.

Two user namespaces, as ch-run 0.45 has them: the outer one maps 0 to the host's effective ids
(so that mounting, and later FUSE, work unprivileged) and owns the mount namespace; the inner one
maps the container's uid and gid onto that 0. `setgroups` is denied in both.
"""

from chjoin import libc
from chjoin.log import Fatal


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _map_ids(uid, outer_uid, gid, outer_gid):
    """Map `uid`/`gid` of the namespace we just entered onto the parent's ids, one each."""
    _write("/proc/self/uid_map", f"{uid} {outer_uid} 1\n")
    _write("/proc/self/setgroups", "deny\n")
    _write("/proc/self/gid_map", f"{gid} {outer_gid} 1\n")


def enter_outer(host_uid, host_gid):
    """Unshare a user + mount namespace in which we are root, mapped onto the host's ids."""
    try:
        libc.unshare(libc.CLONE_NEWUSER | libc.CLONE_NEWNS)
        _map_ids(0, host_uid, 0, host_gid)
    except OSError as e:
        hint = " (is the launcher multi-threaded?)" if e.errno == 22 else ""
        raise Fatal(f"can't create user+mount namespaces: {e.strerror}{hint}") from None


def enter_inner(uid, gid):
    """Unshare the inner user namespace, where we are `uid`:`gid`, mapped onto the outer root."""
    try:
        libc.unshare(libc.CLONE_NEWUSER)
        _map_ids(uid, 0, gid, 0)
    except OSError as e:
        raise Fatal(f"can't create inner user namespace for {uid}:{gid}: {e.strerror}") from None
