"""Whether a directory is the user's own: nobody but them (and root) can have made it, or can
change what it holds. Used for what decides what a launch runs or where it meets its peers: the
storage directory and its entries, the SquashFS mount point, the directory of the names' key.

A directory is trusted for `uid` when it and every directory above it is owned by `uid` or root
and is not writable by group or others, except a sticky one (`/tmp`, `/var/tmp`: others can make
entries there, but not rename or remove ours). Its own checks are on `lstat`, so a symlink where a
directory should be is refused; the path above it is taken as the kernel resolves it now, and
since every directory on it is ours or root's, nobody else can make it resolve otherwise later.
This module runs on the rank path: it imports nothing but `os` and `stat`.
"""

import os
import stat


def owner_name(uid):
    """`name (uid N)`, or `uid N` for a uid with no passwd entry."""
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def entry_problem(path, uid, st=None, root_ok=True, sticky_ok=True):
    """Why directory `path` (its `lstat`, or `st`) is not one that only `uid` (and root, with
    `root_ok`) controls, or "". A sticky directory writable by others passes with `sticky_ok`
    (a directory above the one we use: ours in it can't be renamed), never the one we use."""
    if st is None:
        try:
            st = os.lstat(path)
        except OSError as e:
            return f"{path}: {e.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != uid and not (root_ok and st.st_uid == 0):
        return f"{path} is owned by {owner_name(st.st_uid)}"
    if st.st_mode & 0o022 and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        return f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return ""


def parents_problem(path, uid):
    """Why a directory above `path` (absolute) lets someone other than `uid` or root change
    what `path` resolves to, or ""; the first such directory from `/` down is named."""
    real = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    parts = [p for p in real.split("/") if p]
    for i in range(len(parts) + 1):
        problem = entry_problem("/" + "/".join(parts[:i]), uid)
        if problem:
            return problem
    return ""


def dir_problem(path, uid, root_ok=True):
    """Why existing directory `path` and the directories above it are not `uid`'s own (see the
    module's docstring), or ""."""
    return (parents_problem(path, uid)
            or entry_problem(path, uid, root_ok=root_ok, sticky_ok=False))
