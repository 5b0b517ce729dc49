"""Named containers for `chjoinctl ps`, `stop` and `save`: found in the records' heads (a tag
`name.JOB.NAME`, chjoin.named), described, ended, packed.

Whatever acts on a container (the record, its processes, its files) runs in a child that has
dropped to the container owner's ids, with a deadline (`runas.run_as`), so that the kernel's own
checks decide; its holder is signalled only through a pidfd checked to be the owner's
`chjoin-holder` in the container's namespaces (`runas.signal_holder`). Root only reads: records
by one bounded `pread` each (`groups.read_record`), and only those the uid in their name owns,
and the /proc entries of a holder only once `runas.holder_problem` found it the owner's.
"""

import os
import time

from chjoin import ipc, named, ns, runas
from chjoin.admin import groups as groupsmod
from chjoin.record import READY, SETUP

STATES = {SETUP: "building", READY: "running"}


class Problem(Exception):
    """What stops a command, in one line."""


def _holder_memory(pid):
    """(resident KiB of the holder, KiB its container's -W tmpfs holds or None without -W)."""
    rss = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return rss, _tmpfs_kib(pid)


def _root_fstype(pid):
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == "/":
                    return line.partition(" - ")[2].split()[0]
    except (OSError, IndexError):
        pass
    return None


def _tmpfs_kib(pid):
    """The -W layer's use: an overlay's statfs is its upper layer's (the tmpfs)."""
    if _root_fstype(pid) != "overlay":
        return None
    try:
        st = os.statvfs(f"/proc/{pid}/root/")
    except OSError:
        return None
    return (st.f_blocks - st.f_bfree) * st.f_frsize // 1024


def survey(uid=None):
    """[dict]: every named container of `uid` (None: everyone's) on this node."""
    now_ticks = groupsmod.uptime_ticks()
    found = []
    for record_name in groupsmod.record_names(uid):
        path = f"/dev/shm/{record_name}"
        tag, groups, _problem = groupsmod.read_record(path, int(record_name.split("-", 2)[1]))
        scope = named.parse_tag(tag) if tag else None
        if scope is None:
            continue        # another kind, or unreadable, corrupt or foreign: `ps` shows those
        try:
            st = os.lstat(path)
        except OSError:
            continue
        for g in groups:
            if not g.named:
                continue
            terms = dict(t.partition("\0")[::2] for t in g.terms)
            # the record is its owner's words: read nothing of a process (memory, root, what
            # is inside) before it is found to be their holder in the container's namespaces
            holder_alive = bool(g.holder[0]) and not runas.holder_problem(
                g.holder[0], g.holder[1], st.st_uid, tuple(g.inodes) if g.inodes[0] else None)
            inside = named.processes_inside(tuple(g.inodes), (g.holder[0],)) \
                if g.inodes[0] and holder_alive else []
            rss, tmpfs = _holder_memory(g.holder[0]) if holder_alive else (None, None)
            found.append({
                "name": scope[1], "job": scope[0], "uid": st.st_uid,
                "gid": runas.ids_of(st.st_uid, st.st_gid)[0],
                "tag": tag, "path": path,
                "state": STATES.get(g.state, "failed") if holder_alive or g.state == SETUP
                else "gone",
                "image": terms.get("image", ""), "terms": terms,
                "age": round(max(0.0, (now_ticks - g.slots[0][2]) / groupsmod.TICKS), 1),
                "creator": g.slots[0][0], "holder": g.holder[0] or None,
                "holder_start": g.holder[1],
                "holder_alive": holder_alive, "keep": g.deadline or None,
                "inodes": list(g.inodes), "id": list(g.id),
                "inside": len(inside),
                "processes": [{"pid": p, "comm": groupsmod.comm(p)} for p in sorted(inside)],
                "holder_kib": rss, "tmpfs_kib": tmpfs,
            })
    return found


def _size(kib):
    return "-" if kib is None else f"{kib / 1024:.1f}M"


def text(names):
    """The table `chjoinctl ps` prints after the groups."""
    if not names:
        return "no named containers on this node"
    lines = [f"{'NAME':<20} {'JOB':>7} {'UID':>6} {'STATE':<8} {'AGE':>8} {'RANKS':>5} "
             f"{'HOLDER':>8} {'MEMORY':>14}  IMAGE"]
    for n in names:
        memory = f"{_size(n['holder_kib'])}+{_size(n['tmpfs_kib'])}"
        lines.append(f"{n['name']:<20} {n['job'] or '-':>7} {n['uid']:>6} {n['state']:<8} "
                     f"{n['age']:>7.1f}s {n['inside']:>5} {n['holder'] or '-':>8} "
                     f"{memory:>14}  {n['image']}")
        if n["processes"]:
            lines.append("    inside: " + " ".join(f"{p['pid']} ({p['comm']})"
                                                   for p in n["processes"]))
    lines.append("MEMORY: the holder's resident memory + the -W layer's (tmpfs) use")
    return "\n".join(lines)


def find(name, job=None, uid=None):
    """The one named container `name` of `uid`: of `job` if given ("none": outside Slurm);
    `Problem` if none or several."""
    matches = [n for n in survey(uid) if n["name"] == name and
               (job is None or n["job"] == (None if job == "none" else job))]
    if not matches:
        where = {None: "", "none": " outside Slurm"}.get(job, f" in job {job}")
        raise Problem(f"no container named {name}{where} on this node")
    if len(matches) > 1:
        jobs = ", ".join(n["job"] or "none" for n in matches)
        raise Problem(f"{len(matches)} containers are named {name} (jobs: {jobs}); "
                      "give --job (none: outside Slurm)" +
                      ("" if len({n["uid"] for n in matches}) == 1 else " or --uid"))
    return matches[0]


def as_owner(entry, action, *args, timeout=60.0):
    """Run `action(*args)` in a child with the ids of the container's owner (`runas.run_as`,
    killed after `timeout` seconds; root's own containers: as root); its one-line problem, or ""
    when it succeeded."""
    gid, groups = runas.ids_of(entry["uid"], entry["gid"])
    try:
        return runas.run_as(entry["uid"], gid, action, *args, groups=groups,
                            deadline=time.monotonic() + timeout) or ""
    except runas.Timeout:
        return f"gave up after {timeout:g} s (its child as uid {entry['uid']} was killed)"
    except runas.ChildFailed as e:
        return str(e)


def _signal_inside(inodes, pids, signum):
    """Send `signum` to each of `pids` still in namespaces `inodes`, through a pidfd."""
    from chjoin import libc
    for pid in pids:
        try:
            fd = libc.pidfd_open(pid)
        except OSError:
            continue
        try:
            if (os.stat(f"/proc/{pid}/ns/user").st_ino,
                    os.stat(f"/proc/{pid}/ns/mnt").st_ino) == inodes:
                libc.pidfd_send_signal(fd, signum)
        except OSError:
            pass
        finally:
            os.close(fd)


def _wait_empty(inodes, but, timeout):
    deadline = time.monotonic() + timeout
    while True:
        left = named.processes_inside(inodes, but)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def stop(entry, grace=10.0):
    """As the owner: the name out of its record, SIGTERM to every process inside (SIGKILL to
    those left after `grace` seconds), then the holder; nothing left inside."""
    objects = ipc.Objects("/" + os.path.basename(entry["path"]), entry["tag"],
                          time.monotonic() + 5)
    try:
        groups = objects.read() or []
        left = [g for g in groups if list(g.id) != entry["id"]]
        objects.commit(left)
    finally:
        objects.unlock()
        objects.map.close()
        os.close(objects.fd)
        objects.sem.close()
    inodes, holder = tuple(entry["inodes"]), entry["holder"] or 0
    if not inodes[0]:
        return ""
    _signal_inside(inodes, named.processes_inside(inodes, (holder,)), 15)
    left = _wait_empty(inodes, (holder,), grace)
    if left:
        _signal_inside(inodes, left, 9)
        _wait_empty(inodes, (holder,), 5)
    if holder:
        problem = runas.signal_holder(holder, entry["holder_start"], entry["uid"], inodes,
                                      (15, 18))     # SIGCONT: a stopped holder acts on it
        if problem and ns.alive(holder, entry["holder_start"]):
            raise Problem(f"did not signal the holder the record names: {problem}")
    if _wait_empty(inodes, (), 3):
        _signal_inside(inodes, named.processes_inside(inodes), 9)
    left = _wait_empty(inodes, (), 5)
    if left:
        raise Problem(f"processes still inside after SIGKILL: {' '.join(map(str, left))}")
    return ""


def _mount_points(pid):
    """The container's mount points below its root, as paths relative to it (top ones only)."""
    points = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if point == "/":
                continue
            point = point.encode().decode("unicode_escape")   # \040 and the like
            if not any(point.startswith(p.rstrip("/") + "/") for p in points):
                points.append(point)
    return points


def _glob_escape(path):
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in path)


def save(entry, dest, force):
    """As the owner: pack the container's root as its holder sees it (the image with the -W
    layer's changes; mount points kept as empty directories, bound files as they show) into
    SquashFS `dest`, written to a file in a fresh private directory beside it, then linked
    (renamed, with `force`) into place."""
    import shutil
    import subprocess
    import tempfile

    holder, inodes = entry["holder"], tuple(entry["inodes"])
    root = f"/proc/{holder}/root/"
    try:
        if (os.stat(f"/proc/{holder}/ns/user").st_ino,
                os.stat(f"/proc/{holder}/ns/mnt").st_ino) != inodes:
            raise Problem(f"the holder (pid {holder}) is no longer the container's")
        excludes = []
        for point in _mount_points(holder):
            rel = _glob_escape(point.lstrip("/"))
            if os.path.isdir(root + point.lstrip("/")):
                excludes += [f"{rel}/*", f"{rel}/.*"]
    except OSError as e:
        raise Problem(f"can't read the container (holder pid {holder}): {e.strerror}") from None
    try:        # a directory of our own beside dest: nobody can plant a name mksquashfs writes
        private = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.",
                                   dir=os.path.dirname(dest))
    except OSError as e:
        raise Problem(f"can't write {dest}: {e.strerror}") from None
    tmp = f"{private}/image.sqfs"
    command = ["mksquashfs", root, tmp, "-noappend", "-quiet", "-no-progress", "-wildcards"]
    if excludes:
        command += ["-e", *excludes]
    try:
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode:
            output = (done.stderr or done.stdout).strip().splitlines()
            raise Problem(f"mksquashfs failed: {output[-1] if output else done.returncode}")
        os.chmod(tmp, 0o644)
        if force:
            os.rename(tmp, dest)
        else:
            os.link(tmp, dest)      # never over a file that appeared meanwhile
    except FileExistsError:
        raise Problem(f"{dest} exists (--force replaces it)") from None
    except OSError as e:
        if e.filename == "mksquashfs":
            raise Problem(f"can't run mksquashfs: {e.strerror} (install squashfs-tools)") from None
        raise Problem(f"can't write {dest}: {e.strerror}") from None
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return ""
