"""Whether a directory is the user's own: nobody but them (and root) can have made it, or can
change what it holds. Used for what decides what a launch runs or where it meets its peers: the
storage directory and its entries, the SquashFS mount point, the directory of the names' key.

A directory is trusted for `uid` when it and every directory above it is owned by `uid` or root
and is not writable by group or others, except a sticky one (`/tmp`, `/var/tmp`: others can make
entries there, but not rename or remove ours). A path is resolved here, one component at a time
(`resolve`), not by the kernel: every directory on the way is checked, and a symlink is followed
only if `uid` or root made it. Once a path passes, nobody else can make it resolve otherwise
later, so the path itself can be used afterwards; a symlink another user planted (in `/var/tmp`,
say, leading into a directory of yours) is refused with its owner's name, never followed.
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


def resolve(path, uid, missing_ok=False):
    """(real, problem): `path` resolved component by component, checking each directory met on
    the way (`entry_problem`, sticky allowed) and following a symlink only if it is owned by
    `uid` or root; `problem` is why the resolution is not one only they decide ("" if it is).
    With `missing_ok`, the components from the first missing one on are appended unresolved
    (they are for the caller to make; a `..` among them is a problem, as the kernel would not
    go up through a missing one); else a missing one is a problem."""
    todo = path if path.startswith("/") else f"{os.getcwd()}/{path}"
    todo = [part for part in reversed(todo.split("/")) if part not in ("", ".")]
    done, follows = [], 0
    problem = entry_problem("/", uid)
    while todo and not problem:
        part = todo.pop()
        if part == "..":
            done = done[:-1]
            continue
        here = "/" + "/".join(done + [part])
        try:
            st = os.lstat(here)
        except FileNotFoundError as e:
            if missing_ok and ".." not in todo:     # the kernel would not go up through it
                done += [part] + todo[::-1]
                break
            problem = f"{here}: {e.strerror}"
        except OSError as e:
            problem = f"{here}: {e.strerror}"
        else:
            if stat.S_ISLNK(st.st_mode):
                follows += 1
                if st.st_uid not in (uid, 0):
                    problem = f"{here} is a symlink owned by {owner_name(st.st_uid)}"
                elif follows > 40:
                    problem = f"{here}: Too many levels of symbolic links"
                else:
                    try:
                        target = os.readlink(here)
                    except OSError as e:
                        problem = f"{here}: {e.strerror}"
                        break
                    if target.startswith("/"):
                        done = []
                    todo += [p for p in reversed(target.split("/")) if p not in ("", ".")]
            else:
                done.append(part)
                if todo:          # a directory to go through; the last component is the caller's
                    problem = entry_problem(here, uid, st)
    return "/" + "/".join(done), problem


def parents_problem(path, uid):
    """Why a directory above `path` (or a symlink on the way to it) lets someone other than
    `uid` or root change what `path` resolves to, or ""; the first such one is named."""
    real, problem = resolve(os.path.dirname(path) or ".", uid)
    return problem or entry_problem(real, uid)


def dir_problem(path, uid, root_ok=True, sticky_ok=False):
    """Why existing directory `path`, the symlinks on the way to it and the directories above it
    are not `uid`'s own (see the module's docstring), or ""."""
    real, problem = resolve(path, uid)
    return problem or entry_problem(real, uid, root_ok=root_ok, sticky_ok=sticky_ok)
