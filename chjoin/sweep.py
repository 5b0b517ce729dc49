"""Cleaning records from outside a group: `chjoinctl gc` (a user's own, or root's for anyone)
and the Slurm epilog.

Root trusts nothing in /dev/shm. An object `chjoin-<uid>-…` or `sem.chjoin-<uid>-…` is handled
only when it is a regular file (opened O_NOFOLLOW|O_NONBLOCK, then fstat) owned by that very
uid with mode 0600; anything else is reported and left alone (it is not that user's, and not
root's business to remove). The objects of one owner are then swept in one child that has
dropped to the owner's ids (`runas.run_as`, with a deadline), which opens each again and checks
it again: the kernel decides what it may unlink or signal, as if the owner did it. A record is
read as one `pread` snapshot and parsed with every field bounded (`record.parse`), never mapped.

A record is cleaned as an arriving rank would: under its lock, never waited for (whoever holds
it is alive and busy), the groups that are over ended, and the record and its semaphore
unlinked once no group is left. A holder named by a record is signalled only through a pidfd,
after checking that it is a `chjoin-holder` of the owner in the group's namespaces
(`runas.signal_holder`). A corrupt record is removed (reported as corrupt).
"""

import fcntl
import os
import signal
import stat
import time

from chjoin import ns, record, runas
from chjoin.ipc import review

SHM = "/dev/shm"
TIMEOUT = 30.0          # seconds one owner's sweep may take before its child is killed
LINES = 20              # lines of each kind (removed, problem) the epilog logs; then a count


def is_uid(text):
    """Whether `text` is a uid as chjoin writes it: 1 to 10 ASCII digits (str.isdigit also takes
    `²` and other digits int() refuses: a name anybody can make in /dev/shm)."""
    return 0 < len(text) <= 10 and text.isascii() and text.isdigit()


def split_name(name):
    """(uid, is_semaphore) of a chjoin object's name in /dev/shm, or None for anything else."""
    semaphore = name.startswith("sem.")
    parts = name[4 if semaphore else 0:].split("-", 2)
    if len(parts) != 3 or parts[0] != "chjoin" or not is_uid(parts[1]) or not parts[2]:
        return None
    if int(parts[1]) >= 1 << 32:
        return None
    return int(parts[1]), semaphore


def names_by_owner(uid=None):
    """{uid: [name]} of the chjoin objects in /dev/shm (of `uid` only, if given), by the uid
    their names carry."""
    found = {}
    for name in sorted(os.listdir(SHM)):
        parsed = split_name(name)
        if parsed and (uid is None or parsed[0] == uid):
            found.setdefault(parsed[0], []).append(name)
    return found


def open_checked(path, uid, flags=os.O_RDONLY):
    """(fd, "") of `path` opened with `flags`, O_NOFOLLOW and O_NONBLOCK when it is a regular
    file of `uid` with mode 0600; (None, why not) otherwise (nothing left open)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, ""
    except OSError as e:
        kind = "a symlink" if e.errno == 40 else e.strerror
        return None, f"left {path} alone: {kind}"
    st = os.fstat(fd)
    problem = ""
    if not stat.S_ISREG(st.st_mode):
        problem = f"left {path} alone: not a regular file"
    elif st.st_uid != uid or stat.S_IMODE(st.st_mode) != 0o600:
        problem = (f"left {path} alone: owned by uid {st.st_uid}, mode "
                   f"{stat.S_IMODE(st.st_mode):o}, not uid {uid}'s with mode 600")
    if problem:
        os.close(fd)
        return None, problem
    return fd, ""


def sweep_all(uid=None, tag=None, force_tag=None, dry_run=False, timeout=TIMEOUT,
              deadline=None):
    """Sweep the records (and orphaned semaphores) of `uid` (None: every owner's; only root may
    sweep another's), only those of `tag` if given, forcing those whose stored tag starts with
    `force_tag`. Returns [(what, detail)]: ("removed", path), ("holder", pid) dismissed, and
    ("problem", line) for each thing left alone or that went wrong. Never raises for what it
    finds. Each owner's sweep ends within `timeout` s, the whole by `deadline` (a monotonic
    time) if given: anybody can make any number of names under any uid's prefix."""
    done = []
    me = os.geteuid()
    for who, names in names_by_owner(uid).items():
        if me != 0 and who != me:
            continue
        kept = []
        for i, name in enumerate(names):
            if deadline is not None and time.monotonic() > deadline:
                done.append(("problem", f"out of time: {len(names) - i} names of uid {who} "
                                        "not looked at"))
                break
            fd, problem = open_checked(f"{SHM}/{name}", who)
            if fd is None:
                if problem:
                    done.append(("problem", problem))
                continue
            os.close(fd)
            kept.append(name)
        if not kept:
            continue
        gid, groups = runas.ids_of(who)
        try:
            until = time.monotonic() + timeout
            found = runas.run_as(who, gid, sweep_own, kept, tag, force_tag, dry_run,
                                 deadline=until if deadline is None else min(until, deadline),
                                 groups=groups)
            done += [tuple(item) for item in found]
        except (runas.Timeout, runas.ChildFailed) as e:
            done.append(("problem", f"sweeping uid {who}'s objects: {e}"))
    return done


def bounded(found, who):
    """`found` (of `sweep_all` for owner `who`) with at most LINES of each kind, then one
    saying how many more: anybody can make any number of names under any uid's prefix, and
    each would be a line of the epilog's log."""
    kept, seen = [], {}
    for what, detail in found:
        if what == "holder" or detail.startswith(("out of time: ", "sweeping uid ")):
            kept.append((what, detail))           # few, and each says something of the whole
            continue
        seen[what] = seen.get(what, 0) + 1
        if seen[what] <= LINES:
            kept.append((what, detail))
    more = {what: n - LINES for what, n in seen.items() if n > LINES}
    if more.get("removed"):
        kept.append(("removed", f"{more['removed']} more of uid {who}'s objects"))
    if more.get("problem"):
        kept.append(("problem", f"{more['problem']} more like these with uid {who}'s objects"))
    return kept


def sweep_own(names, tag=None, force_tag=None, dry_run=False):
    """The part of `sweep_all` that runs as the objects' owner: each record of `names`, then
    (without `tag`) each semaphore whose record is gone."""
    done = []
    for name in names:
        if not name.startswith("sem."):
            try:
                done += sweep(name, tag, force_tag, dry_run) or []
            except Exception as e:          # one bad record never stops the others
                done.append(("problem", f"{SHM}/{name}: {runas.describe(e)}"))
    if tag is None:
        for name in names:
            if name.startswith("sem.") and not os.path.lexists(f"{SHM}/{name[4:]}"):
                done += [("removed", p) for p in unlink_names(name[4:], False, dry_run)]
    return done


def sweep(name, tag=None, force_tag=None, dry_run=False):
    """Clean record `/dev/shm/<name>` of this process's uid as an arriving rank would (see the
    module's text). Only the record of `tag`, if given (the tag stored in it: names say
    nothing). A record whose stored tag starts with `force_tag` is unlinked whatever its groups
    (the epilog, for a job's own tags); a corrupt one is unlinked too. Returns [(what, detail)]
    as `sweep_all` does; None if the record is locked."""
    path = f"{SHM}/{name}"
    uid = os.geteuid()
    fd, problem = open_checked(path, uid, os.O_RDWR)
    if fd is None:
        return [("problem", problem)] if problem else []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        if not os.fstat(fd).st_nlink:
            return []
        done = []
        snapshot = os.pread(fd, record.SIZE + 1, 0)       # longer than a record: corrupt
        try:
            stored, groups = record.parse(snapshot)
        except record.Corrupt as e:
            if tag is not None:
                return []
            done.append(("problem", f"{path}: corrupt ({e}): removing it"))
            return done + [("removed", p) for p in unlink_names(name, dry_run=dry_run)]
        if tag is not None and stored != record.stored_tag(tag):
            return []
        force = force_tag is not None and stored.startswith(force_tag)
        now = time.monotonic()
        for g in list(groups):
            if force or review(g, now, thorough=True):
                groups.remove(g)
                done += _dismiss(g, uid, dry_run)
        if groups and not dry_run:
            at, index = record.idle_copy(snapshot)
            os.pwrite(fd, record.encode(stored, groups), at)
            os.pwrite(fd, record.index_bytes(index), 0)
        if not groups:
            done += [("removed", p) for p in unlink_names(name, dry_run=dry_run)]
        return done
    finally:
        os.close(fd)


def _dismiss(g, uid, dry_run):
    """SIGTERM then SIGCONT (a stopped one acts on it) the holder of ended group `g`, if it is
    still the `chjoin-holder` of `uid` in the group's namespaces; [(what, detail)]."""
    pid, start = g.holder
    if not pid or not ns.alive(pid, start):
        return []                 # gone (its pid may be another process's now): nothing to do
    if dry_run:
        problem = runas.holder_problem(pid, start, uid, g.inodes)
    else:
        problem = runas.signal_holder(pid, start, uid, g.inodes,
                                      (signal.SIGTERM, signal.SIGCONT))
    if not problem:
        return [("holder", pid)]
    return [("problem", f"did not signal the holder the record names: {problem}")]


def unlink_names(name, with_record=True, dry_run=False):
    """Unlink `/dev/shm/<name>` (with `with_record`) and its semaphore, each only if it is this
    uid's (`open_checked`); the paths that were removed."""
    removed = []
    for path in ([f"{SHM}/{name}"] if with_record else []) + [f"{SHM}/sem.{name}"]:
        fd, _ = open_checked(path, os.geteuid())
        if fd is None:
            continue
        os.close(fd)
        try:
            if not dry_run:
                os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed
