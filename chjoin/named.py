"""Named containers, `chjoin --name=NAME[:auto|create|exec]`: a container whose holder stays.

The first rank that finds no container of the name builds one (as a single launch does: any
image, -b, -W, ...), forks a holder that keeps its namespaces, and publishes it in the record of
the name's tag (a group of size 0: `chjoin.record`); every later rank enters it through a pidfd of
the holder, checked against the namespace inodes recorded, and builds its environment as a new
rank's (`launch.run` does that after we return; `--seccomp` is per process: each rank that asks
for it gets the filter, whatever the creator did, so it is no term of the container). The record's
names are the tag's keyed rendezvous names (`chjoin.names`): no other user can compute them,
take one first or open the record. The tag: `name.JOB.NAME` under Slurm (the name
belongs to the job, on this node; the epilog ends it), `name..NAME` outside (the user's on this
node, until `chjoinctl stop NAME` or `--keep`).

No lock but the record's: ranks attach concurrently, each holding the lock for a read and the
setns (so that a holder ending an idle container under the lock never leaves a rank half in).
Options that would change the container (its image, -b, -w/-W, -d, ids; later terms always) must be
those it was built with, when given: an attach that differs is one error line naming the first
difference, never a silently different container.

Runs on every rank: imports only what the rank path already has.
"""

import _signal as signal
import os
import time

from chjoin import ipc, ns, record
from chjoin.log import Fatal, checkpoint
from chjoin.record import INSIDE, READY, Group

POLL = 0.02          # seconds between looks at a container another rank is building
IDLE_CHECK = 1.0     # seconds between the holder's counts of the processes inside (--keep)
# The join terms that only options set; an attach that leaves them out takes the container's.
# Any other term (later options that change a container) is always compared.
OPTIONAL_TERMS = ("image", "uid:gid", "write mode", "mount options")


def scope_tag(name, environ):
    """The record's tag: `name.JOB.NAME` in a Slurm job, else `name..NAME`."""
    job = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID") or ""
    return f"name.{job}.{name}"


def parse_tag(tag):
    """(job or None, name) of a named container's tag; None for any other tag."""
    kind, _, rest = tag.partition(".")
    job, dot, name = rest.partition(".")
    if kind != "name" or not dot or not name or not (job.isascii() and job.isdigit() or not job):
        return None
    return job or None, name


def scope_words(name, environ):
    job = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    return f"in job {job} on this node" if job else "of yours on this node"


def launch_tag(launch):
    """The tag of the launch this rank belongs to (its job step, mpirun, ...): the ranks of the
    launch that creates a container may all say `:create`."""
    from chjoin import peers

    try:
        group = peers.find(launch.environ, peers.this_process(launch.environ), launch.join_tag,
                           1)
    except Fatal:
        return f"pid.{os.getpid()}"
    if group.tag_source == "parent pid" and not launch.join:
        return f"pid.{os.getpid()}"     # no launcher: two commands of one shell are two launches
    return group.tag


def difference(g, launch):
    """The first term this rank sets that differs from container `g`'s, in words; "" if none."""
    mine = dict(t.partition("\0")[::2] for t in record.stored_terms(launch.join_terms()))
    for term in g.terms:
        label, _, theirs = term.partition("\0")
        if label not in mine or (label in OPTIONAL_TERMS and label not in launch.given):
            continue
        if mine[label] != theirs:
            return f"{label} {theirs}, this rank {mine[label]}"
    return ""


def _close(objects):
    objects.map.close()
    os.close(objects.fd)
    objects.sem.close()


def run(launch, log):
    """Enter the named container `launch.name`, building it first when there is none (auto,
    create); we end up inside it. Raises `Fatal` with one line for every way it can't be."""
    clock = log.clock
    tag = scope_tag(launch.name, launch.environ)
    from chjoin.launch import rendezvous_names

    names = rendezvous_names(tag, launch.environ, log)   # keyed: nobody else can compute them
    index = 0               # the first of the tag's names no other user holds (ipc.open_objects)
    what = f"--name {launch.name}"
    mine = launch_tag(launch) if launch.name_mode == "create" else None   # else when creating
    deadline = time.monotonic() + launch.join_timeout
    me = [os.getpid(), INSIDE, ns.start_time(os.getpid())]
    log.info(f"name: container {launch.name} ({scope_words(launch.name, launch.environ)}), "
             f"tag {tag}, {launch.name_mode}")
    clock.done("discovery")
    while True:
        checkpoint("named", "arrive")
        objects, index = ipc.open_objects(names, index, tag, deadline, log)
        created = None
        try:
            groups = objects.read()
            if groups is None:
                raise Fatal(f"{what}: {objects.path} is corrupt (chjoinctl gc removes it)")
            g = next((g for g in groups if g.named), None)
            if g is not None and ipc.review(g, time.monotonic()):
                groups.remove(g)
                objects.commit(groups)
                if g.state == READY:
                    raise Fatal(f"{what}: the container's holder (pid {g.holder[0]}) is gone, "
                                "killed: it can't be entered any more; the name is free again")
                continue        # its creator died while building: look again from nothing
            if g is None:
                if launch.name_mode == "exec" or not launch.image:
                    objects.commit(groups)      # nothing of ours: no name left behind
                if launch.name_mode == "exec":
                    raise Fatal(f'{what}: "exec": no container of that name is running '
                                f"({scope_words(launch.name, launch.environ)})")
                if not launch.image:
                    raise Fatal(f"{what}: no container of that name is running "
                                f"({scope_words(launch.name, launch.environ)}), and no IMAGE "
                                "was given to create it")
                created = Group(0, launch.keep, record.stored_terms(launch.join_terms()), [me])
                created.launch = mine or launch_tag(launch)
                objects.commit(groups + [created])
            else:
                if launch.name_mode == "create" and g.launch != mine:
                    raise Fatal(f'{what}: "create": a container of that name exists already '
                                f"(created by pid {g.slots[0][0]})")
                different = difference(g, launch)
                if different:
                    raise Fatal(f"{what}: the container has {different}")
                if g.state == READY:
                    clock.done("wait")
                    clock.role = "attach"
                    checkpoint("named", "attach")
                    _stamp(objects)
                    ns.join([g.holder], g.inodes, log)
                    log.info(f"name: attached to container {launch.name} through its holder, "
                             f"pid {g.holder[0]}")
                    clock.done("join")
                    return
        finally:
            objects.unlock()
            if created is None:
                _close(objects)
        if created is not None:
            break
        if time.monotonic() > deadline:     # SETUP: another rank builds it
            raise Fatal(f"{what}: timed out after {launch.join_timeout:g} s waiting for pid "
                        f"{g.slots[0][0]} to build the container")
        time.sleep(POLL)
    clock.done("wait")
    clock.role = "create"
    _create(launch, log, objects, created.id, what)


def _create(launch, log, objects, group_id, what):
    """Build the container as a single launch does, fork its holder, publish it; on any failure
    the name is withdrawn (ranks waiting for it then find nothing, and try themselves)."""
    from chjoin import launch as launchmod

    try:
        launchmod.build(launch, log)
        checkpoint("named", "built")
        inodes = ns.inodes()
        holder = ns.spawn_holder(lambda: hold(objects, group_id, launch.keep, inodes),
                                 log.clock, HOLDER_SIGNALS)

        def publish(groups, g):
            g.state, g.holder, g.inodes = READY, holder, inodes
        if not _change(objects, group_id, publish):
            ns.dismiss(*holder)
            raise Fatal(f"{what}: stopped (chjoinctl stop) while it was being built")
    except BaseException:
        _change(objects, group_id, lambda groups, g: groups.remove(g))
        raise
    finally:
        _close(objects)
    log.info(f"name: created container {launch.name}; holder pid {holder[0]} keeps it" +
             (f" until {launch.keep:g} s after its last process exits" if launch.keep else ""))
    log.clock.done("join")


def _change(objects, group_id, change):
    """Apply `change(groups, group)` to our group under the lock and commit; False if the group
    is no longer there (or the record is history)."""
    try:
        if not objects.lock(time.monotonic() + 5):
            return False
    except ipc.LockTimeout:
        return False
    try:
        groups = objects.read() or []
        g = next((g for g in groups if g.id == group_id), None)
        if g is None:
            return False
        change(groups, g)
        objects.commit(groups)
        return True
    finally:
        objects.unlock()


def processes_inside(inodes, but=()):
    """Pids of the processes (that we may look at) in the namespaces `inodes`, except `but`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in but:
            continue
        try:
            if (os.stat(f"/proc/{entry}/ns/user").st_ino,
                    os.stat(f"/proc/{entry}/ns/mnt").st_ino) == inodes:
                found.append(int(entry))
        except OSError:
            pass
    return found


def _close_channels(keep_fd):
    """Close the sockets and pipes the holder inherited (the SPANK builder's channel, a
    launcher's): it outlives the launch, and must keep nobody waiting for an end of file."""
    import stat

    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        try:
            if fd > 2 and fd != keep_fd and (stat.S_ISSOCK(os.fstat(fd).st_mode) or
                                             stat.S_ISFIFO(os.fstat(fd).st_mode)):
                os.close(fd)
        except OSError:
            pass


def _stamp(objects):
    """Tell the holder that a process attached, by the record's mtime: one too short-lived for
    its once-a-second look inside still starts --keep's count again."""
    try:
        os.utime(objects.fd)
    except OSError:
        pass


HOLDER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)    # end the holder's container


def hold(objects, group_id, keep, inodes):
    """The holder's life, in its own process inside the container: until the group leaves the
    record (chjoinctl stop, the epilog), SIGTERM/SIGINT/SIGHUP (it then withdraws the name), or,
    with `keep`, `keep` seconds after the last other process inside exited."""
    stop = []
    for signum in HOLDER_SIGNALS:
        signal.signal(signum, lambda signum, frame: stop.append(signum))
    objects.reopen()
    _close_channels(objects.fd)
    checkpoint("holder", "start")
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HOLDER_SIGNALS)     # blocked since the fork
    me = os.getpid()
    idle_since, next_count, stamped = None, 0.0, None
    while not stop:
        status = os.fstat(objects.fd)
        if not status.st_nlink:
            return                          # the names were removed: the record is history
        if status.st_mtime_ns != stamped:   # an attach (`_stamp`), or a change of the record
            stamped, idle_since = status.st_mtime_ns, None
        groups = objects.read()
        if groups is not None and not any(g.id == group_id for g in groups):
            return                          # stopped: out of the record
        now = time.monotonic()
        if keep and now >= next_count:
            next_count = now + IDLE_CHECK
            if processes_inside(inodes, (me,)):
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= keep:
                expired = []

                def end(groups, g):          # under the lock: no rank is half way in
                    if not processes_inside(inodes, (me,)):
                        groups.remove(g)
                        expired.append(g)
                _change(objects, group_id, end)
                if expired:
                    return
                idle_since = None
        time.sleep(ipc.TICK)
    _change(objects, group_id, lambda groups, g: groups.remove(g))
