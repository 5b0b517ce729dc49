"""What `chjoinctl ps` shows: the rendezvous records in /dev/shm, their groups, and the
processes inside each group's container (found by namespace inode)."""

import os
import stat
import time

from chjoin import ns, record
from chjoin.record import FAILED, GONE, INSIDE, READY, SETUP, WAITING

STATES = {SETUP: "SETUP", READY: "READY", FAILED: "FAILED"}
SLOT_STATES = {WAITING: "waiting", INSIDE: "inside", GONE: "gone"}
TICKS = os.sysconf("SC_CLK_TCK")


def record_names(uid=None):
    """Names in /dev/shm of chjoin records: of `uid` (None: every user's)."""
    from chjoin import sweep

    names = []
    for name in sorted(os.listdir("/dev/shm")):
        found = sweep.split_name(name)
        if found is None or found[1]:
            continue
        if uid is not None and found[0] != uid:
            continue
        names.append(name)
    return names


def read_record(path, uid=None):
    """(tag, groups, problem) of the record at `path`, read without its lock (a torn copy is
    re-read): ("", [], "") for an empty one, (None, None, reason) when unreadable, corrupt, not
    a regular file or (with `uid`) not owned by `uid` with mode 0600. Read by `pread` of one
    snapshot, never mapped: root reads users' files here."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        return None, None, "a symlink" if e.errno == 40 else e.strerror
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, None, "not a regular file"
        if uid is not None and (st.st_uid != uid or stat.S_IMODE(st.st_mode) != 0o600):
            return None, None, (f"foreign: owned by uid {st.st_uid}, mode "
                                f"{stat.S_IMODE(st.st_mode):o}, under uid {uid}'s name")
        for _ in range(50):
            try:
                tag, groups = record.parse(os.pread(fd, record.SIZE + 1, 0))
                return tag, groups, ""
            except record.Torn:
                time.sleep(0.002)
            except record.Corrupt as e:
                return None, None, f"corrupt: {e}"
        return None, None, "corrupt: wrong CRC"
    finally:
        os.close(fd)


def uptime_ticks():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0]) * TICKS


def namespace_members():
    """{(user ns inode, mount ns inode): [pid]} of every process we may look at."""
    members = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            key = (os.stat(f"/proc/{entry}/ns/user").st_ino,
                   os.stat(f"/proc/{entry}/ns/mnt").st_ino)
        except OSError:
            continue
        members.setdefault(key, []).append(int(entry))
    return members


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def describe(g, members, now_ticks):
    """One group as plain values (what --json prints, and the text is made of)."""
    terms = dict(t.partition("\0")[::2] for t in g.terms)
    live = [s for s in g.slots if s[1] != GONE and ns.alive(s[0], s[2])]
    holder_alive = bool(g.holder[0]) and ns.alive(*g.holder)
    inside = sorted(members.get(tuple(g.inodes), [])) if g.inodes[0] else []
    return {
        "state": STATES[g.state],
        "expected": g.expected,
        "arrived": len(g.slots),
        "waiting": sum(s[1] == WAITING for s in g.slots),
        "inside": sum(s[1] == INSIDE for s in g.slots),
        "age": round(max(0.0, (now_ticks - g.slots[0][2]) / TICKS), 1) if g.slots else None,
        "winner": g.slots[0][0] if g.slots else None,
        "holder": g.holder[0] or None,
        "holder_alive": holder_alive,
        "image": terms.get("image", ""),
        "terms": terms,
        "error": g.failure()[1] if g.state == FAILED else "",
        "slots": [{"pid": s[0], "state": SLOT_STATES[s[1]],
                   "alive": ns.alive(s[0], s[2])} for s in g.slots],
        "processes": [{"pid": pid, "comm": comm(pid)} for pid in inside],
        "stale": not (live or holder_alive or inside),
    }


def survey(uid=None, tag=None):
    """[record]: each record of `uid` (None: all) and `tag` (None: all; the tag stored in the
    record, as names say nothing of it) as plain values, its groups described."""
    members = namespace_members()
    now_ticks = uptime_ticks()
    records = []
    for name in record_names(uid):
        path = f"/dev/shm/{name}"
        stored, groups, problem = read_record(path, int(name.split("-", 2)[1]))
        if tag is not None and stored != record.stored_tag(tag):
            continue
        if groups and all(g.named for g in groups):
            continue                # named containers: `chjoinctl ps` lists them apart
        groups = [g for g in groups if not g.named] if groups else groups
        try:
            owner = os.lstat(path).st_uid
        except OSError:
            continue
        described = [describe(g, members, now_ticks) for g in groups or []]
        records.append({
            "path": path, "uid": owner, "tag": stored,
            "semaphore": os.path.lexists(f"/dev/shm/sem.{name}"),
            "readable": groups is not None,
            "problem": problem,
            "stale": groups is not None and all(g["stale"] for g in described),
            "groups": described,
        })
    return records


def text(records):
    """The table `chjoinctl ps` prints."""
    if not records:
        return "no chjoin groups on this node"
    lines = [f"{'TAG':<24} {'UID':>6} {'STATE':<8} {'RANKS':>7} {'AGE':>8} {'HOLDER':>8}  IMAGE"]
    for r in records:
        if not r["readable"]:
            state = ("CORRUPT" if r["problem"].startswith("corrupt") else
                     "FOREIGN" if r["problem"].startswith("foreign") else "?")
            lines.append(f"{'?':<24} {r['uid']:>6} {state:<8}  {r['path']}: {r['problem']}")
            continue
        if not r["groups"]:
            lines.append(f"{r['tag']:<24} {r['uid']:>6} {'EMPTY':<8}  (stale record)")
        for g in r["groups"]:
            state = g["state"] + (" (stale)" if g["stale"] else "")
            age = f"{g['age']:.1f}s" if g["age"] is not None else "-"
            holder = str(g["holder"] or "-") + ("" if g["holder_alive"] or not g["holder"]
                                              else "(dead)")
            lines.append(f"{r['tag']:<24} {r['uid']:>6} {state:<8} "
                         f"{g['arrived']:>3}/{g['expected']:<3} {age:>8} {holder:>8}  "
                         f"{g['image']}")
            for state in ("waiting", "inside", "gone"):
                for alive in (True, False):
                    pids = [str(s["pid"]) for s in g["slots"]
                            if s["state"] == state and s["alive"] == alive]
                    if pids:
                        lines.append(f"    ranks {state}{'' if alive else ' (exited)'}: "
                                     f"{' '.join(pids)}")
            if g["processes"]:
                lines.append("    in container: " + " ".join(f"{p['pid']} ({p['comm']})"
                                                          for p in g["processes"]))
            if g["error"]:
                lines.append(f"    failed: {g['error']}")
    return "\n".join(lines)
