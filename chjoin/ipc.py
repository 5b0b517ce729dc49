"""The rendezvous: the first rank of a group builds the container, the others enter it.

Two objects per user and tag, both created 0600 and owner-checked: a shared-memory record
`/dev/shm/chjoin-<uid>-<hex>` and a semaphore `/dev/shm/sem.chjoin-<uid>-<hex>`, under a name no
other user can compute (`chjoin.names`). A record name that another user holds anyway (seen in
/dev/shm and taken after our group ended) is skipped: every rank walks the tag's names in one order
and meets the others at the first whose record is free or ours. A semaphore taken by another user
(made the moment our record appeared) is not used: the ranks poll the record instead.

The record (its layout and bounded parse: `chjoin.record`) holds the tag and a small table of
the tag's *groups* (at most `MAX_GROUPS` at once). A group is one
container: its winner (the first slot, and the group's identity), its expected size, its
deadline, its holder and namespace inodes once built, and one slot per rank that arrived.

- Mutual exclusion is flock(2) on the record. The kernel drops it when the last descriptor of
  the open file description goes, so no two processes ever share one: the holder opens its own.
  Only reads and small writes happen under it, with the signals that make a rank leave held off.
- The table is written whole into the idle one of two copies, with a CRC, and then made current
  by one aligned 8-byte store: a rank killed while writing leaves the current copy intact.
- The semaphore only wakes waiters; every wait also re-reads the record each tick.
- No barrier: the winner runs its command as soon as it has published the container (READY); a
  peer enters as soon as its group is READY. The holder keeps the container until all expected
  ranks are in, or until the group's deadline (the winner's arrival + its join timeout).
- A group ends in one place, `_end`: whoever finds it over (complete, past its deadline, failed
  with nobody left waiting, or with no process left in its container) removes it from the table
  and dismisses its holder. The one who empties the table unlinks both names; a record whose
  names are gone is history, and whoever then locks it opens the name again (`Objects`).
- A rank joins the open group on its tag that has its size and configuration, or starts one of
  its own beside the others: ranks never wait for a group that is not theirs.
"""

import _signal as signal    # `signal` is this plus enums, whose import costs every rank 4 ms
import fcntl
import mmap
import os
import stat
import time

import posix_ipc

from chjoin import ns, record
from chjoin.log import EXIT_ERROR, Fatal, checkpoint
from chjoin.record import (FAILED, GONE, INSIDE, MAX_GROUPS, READY, SETUP, SIZE, WAITING, Group,
                           stored_terms)

TICK = 0.1            # seconds between re-reads of the record while waiting, and holder checks
GRACE = 2.0           # seconds past its deadline that a holder waits for ranks still joining
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT", signal.SIGHUP: "SIGHUP"}
_DEFERRED = set(_NAMES)   # leave the group when received; held off while the lock is held
SIGNALS = frozenset(_DEFERRED)


def difference(g, expected, terms):
    """What makes a rank with `expected` and `terms` unfit for group `g`, or "" if nothing."""
    if g.expected != expected:
        return f"group size {g.expected}, this rank {expected}"
    for theirs, mine in zip(g.terms, terms):
        if theirs != mine:
            label, _, text = theirs.partition("\0")
            return f"{label} {text}, this rank {mine.partition(chr(0))[2]}"
    return ""


def keepers(g):
    """Live processes that hold the container's namespaces: the holder, then ranks inside."""
    found = [g.holder] if g.holder[0] and ns.alive(*g.holder) else []
    return found + [(s[0], s[2]) for s in g.slots if s[1] == INSIDE and ns.alive(s[0], s[2])]


def review(g, now, thorough=False):
    """Settle what group `g` has become, marking it FAILED when it can no longer serve; True
    when it is over. `thorough` checks that each waiting rank still lives; without it, a dead
    rank's slot keeps the group a little longer (the holder's next check ends it), never less.
    A group with no live holder is always checked thoroughly: nobody else would."""
    winner = g.slots[0]
    if g.named:         # chjoin.named: no size, no deadline; over when nothing can serve
        if g.state == SETUP and ns.alive(winner[0], winner[2]):
            return False
        return g.state != READY or not ns.alive(*g.holder)
    if g.state == SETUP:
        if ns.alive(winner[0], winner[2]):
            return False
        g.fail(f"the winner (pid {winner[0]}) died while building the container")
    if g.state == READY and not ns.alive(*g.holder):
        thorough = True
        if not keepers(g):
            g.fail(f"the container is gone: its holder (pid {g.holder[0]}) and every rank in it "
                   "have exited")
    waiting = g.waiting(thorough or g.state == FAILED)
    if g.state == FAILED:
        return not waiting
    complete = len(g.slots) == g.expected and not waiting
    return complete or now >= g.deadline + (GRACE if waiting else 0)


def is_open(g, now):
    """Whether a rank arriving `now` may still join `g`."""
    return g.state in (SETUP, READY) and len(g.slots) < g.expected and now < g.deadline


class Taken(Fatal):
    """Another user holds (an object under) this name: the next name of the tag is tried."""


class _NoSemaphore:
    """Stands in for a semaphore that another user made under our record's name (seen the
    moment our record appeared): it only ever woke waiters, so they poll the record instead."""

    POLL = 0.01

    def __init__(self, reason):
        self.reason = reason

    def release(self):
        pass

    def acquire(self, timeout):
        time.sleep(min(timeout, self.POLL))


class LockTimeout(Fatal):
    """The record's lock stayed taken (by a process stopped while holding it) past a deadline."""


class Objects:
    """The open record and semaphore of one tag: the lock, and reading and writing the table."""

    def __init__(self, name, tag, deadline):
        self.name, self.tag = name, tag
        self.path = f"/dev/shm{name}"
        for _ in range(1000):
            self.fd = self._open_record()
            if self.lock(deadline):
                break
            os.close(self.fd)      # the last one out removed it while we waited: start over
        if os.fstat(self.fd).st_size < SIZE:
            os.ftruncate(self.fd, SIZE)
        self.map = mmap.mmap(self.fd, SIZE)
        checkpoint("any", "record")      # the record is there, its semaphore not yet
        try:
            self.sem = self._open_semaphore()
        except Taken as e:
            self.sem = _NoSemaphore(str(e))

    def _open_record(self):
        try:
            fd = posix_ipc.SharedMemory(self.name, posix_ipc.O_CREAT, mode=0o600).fd
        except posix_ipc.Error as e:
            raise Taken(self._foreign(self.path, e)) from None
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077 or not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise Taken(self._foreign(self.path, None))
        return fd

    def _open_semaphore(self):
        path = f"/dev/shm/sem.{self.name[1:]}"
        try:
            if os.lstat(path).st_uid != os.geteuid():      # not even mapped
                raise Taken(self._foreign(path, None))
        except FileNotFoundError:
            pass
        try:
            sem = posix_ipc.Semaphore(self.name, posix_ipc.O_CREAT, mode=0o600, initial_value=0)
        except posix_ipc.Error as e:
            raise Taken(self._foreign(path, e)) from None
        st = os.lstat(path)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077 or not stat.S_ISREG(st.st_mode):
            sem.close()
            raise Taken(self._foreign(path, None))
        return sem

    @staticmethod
    def _foreign(path, err):
        try:
            st = os.lstat(path)
            owner = f"owned by uid {st.st_uid}, mode {st.st_mode & 0o777:o}"
        except OSError:
            owner = str(err)
        return f"join: can't use {path}: {owner}; another user holds this group's name"

    def reopen(self):
        """A description of the record of our own (the holder's, just forked): a lock taken
        through a description that another process shares would outlive our death."""
        fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDWR | os.O_CLOEXEC)
        self.map.close()            # its own dup of the shared description goes too
        os.close(self.fd)
        self.fd, self.map = fd, mmap.mmap(fd, SIZE)

    def lock(self, deadline):
        """Take the record's lock, blocking the signals that make a rank leave while we hold
        it, so that no table is ever left half done. False (unlocked) if the names were
        removed meanwhile: the record is history."""
        delay = 0.0002
        while True:
            signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                let_signals_in()    # wait interruptibly
            if time.monotonic() > deadline:
                raise LockTimeout(f"join: timed out waiting for the lock on {self.path}")
            time.sleep(delay)
            delay = min(delay * 2, 0.005)
        if not os.fstat(self.fd).st_nlink:
            self.unlock()
            return False
        return True

    def unlock(self, release_signals=True):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        if release_signals:
            let_signals_in()

    def read(self):
        """The groups of the record, or None when they can't be read (torn by a write we
        raced without the lock, or corrupt)."""
        try:
            return record.parse(self.map)[1]
        except record.Corrupt:
            return None

    def commit(self, groups):
        """Store the table (under the lock). With no group left, unlink both names: the next
        rank starts from nothing, and any rank holding this record starts over."""
        try:
            record.store(self.map, self.tag, groups)
        except ValueError as e:
            raise Fatal(f"join: {e}") from None
        if groups:
            return
        unlinks = [posix_ipc.unlink_shared_memory]
        if not isinstance(self.sem, _NoSemaphore):
            unlinks.insert(0, posix_ipc.unlink_semaphore)
        for unlink in unlinks:
            try:
                unlink(self.name)
            except posix_ipc.ExistentialError:
                pass

    def wake(self, count):
        for _ in range(count):
            self.sem.release()


def _end(groups, g):
    """Group `g` is over: out of the table, and its holder (if another process) dismissed."""
    groups.remove(g)
    if g.holder[0] and g.holder[0] != os.getpid():
        ns.dismiss(*g.holder)


def _review_all(objects, groups, now):
    """End every group that is over; wake the ranks waiting on a group that failed."""
    for g in list(groups):
        before = g.state
        over = review(g, now)
        if g.state != before:
            objects.wake(len(g.waiting(thorough=False)))
        if over:
            _end(groups, g)


def stop_on_signals(tag):
    """While this rank takes part in group `tag`, SIGTERM, SIGINT and SIGHUP (scancel, Ctrl-C,
    a launcher going away) raise `Fatal` (exit 128+N), once, so that it leaves the group
    cleanly rather than die with its slot held; the later ones, of any of the three, are
    blocked from then on (pending, never delivered: Python's exit would otherwise let them
    kill us), so that the first one's error is reported whole. They are held off while we hold
    the record's lock; the exec of the command resets them. One that is ignored (nohup) stays
    ignored."""
    def stop(signum, _frame):
        _received.append(signum)
        if len(_received) == 1:
            signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
            raise _stop(tag, signum)

    for signum in _DEFERRED:
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, stop)


def let_signals_in():
    """Let in the signals held off while the lock was held, unless one has already come: then
    they stay blocked until we exit (`stop_on_signals`)."""
    if not _received:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _DEFERRED)


_received = []


def _stop(tag, signum):
    return Fatal(f"join: group {tag}: {_NAMES[signum]} received before the "
                 "container was ready", 128 + signum)


def open_objects(names, start, tag, deadline, log):
    """(objects, index) of the first of the tag's `names` from `start` on whose record no
    other user holds; the last one's error if every one is taken."""
    for i in range(start, len(names)):
        try:
            return Objects(names[i], tag, deadline), i
        except Taken as e:
            if i + 1 == len(names):
                raise Fatal(f"{e} (and the {i} names before it)" if i else str(e)) from None
            log.warning(f"{e}; trying the next name")


def arrive(tag, expected, terms, timeout, log, names):
    """Enter the tag's open group that has our size and terms, or start one as its winner,
    under the first of `names` (`chjoin.names`) that is ours. Waits (up to `timeout` seconds)
    only when the tag has `MAX_GROUPS` groups already. Returns a `Member`."""
    arrived = time.monotonic()
    deadline = arrived + timeout
    me = [os.getpid(), WAITING, ns.start_time(os.getpid())]
    terms = stored_terms(terms)
    warned, start = [], 0
    while True:
        checkpoint("any", "arrive")
        objects, start = open_objects(names, start, tag, deadline, log)
        if isinstance(objects.sem, _NoSemaphore) and not warned:
            warned.append(objects.sem.reason)
            log.warning(f"{objects.sem.reason}; this rank polls the record instead")
        try:
            checkpoint("any", "locked")
            groups = objects.read() or []
            now = time.monotonic()
            _review_all(objects, groups, now)
            mine = [g for g in groups if is_open(g, now) and not difference(g, expected, terms)]
            if mine:
                group = mine[0]
                group.slots.append(me)
            elif len(groups) < MAX_GROUPS:
                other = [g for g in groups if is_open(g, now)]
                if other:
                    log.warning(f"join: tag {tag} has a group with "
                                f"{difference(other[0], expected, terms)}; this rank starts "
                                "a group of its own")
                group = Group(expected, arrived + timeout, terms, [me])
                groups.append(group)
            else:
                group = None
            objects.commit(groups)
        finally:
            objects.unlock(release_signals=False)
        if group is not None:
            member = Member(objects, group, tag, timeout, deadline, log)
            member.release_signals()
            return member
        let_signals_in()
        objects.map.close()
        os.close(objects.fd)
        if time.monotonic() + TICK > deadline:
            raise Fatal(f"join: timed out after {timeout:g} s: tag {tag} has {MAX_GROUPS} "
                        "groups forming at once")
        time.sleep(TICK)


class Member:
    """This rank's place in one group: the winner's, a peer's, or (forked) the holder's."""

    def __init__(self, objects, group, tag, timeout, deadline, log):
        self.objects, self.id, self.slot = objects, group.id, len(group.slots) - 1
        self.tag, self.timeout, self.deadline, self.log = tag, timeout, deadline, log
        self.group = group              # as it was when we last looked
        self.winner = self.slot == 0

    def release_signals(self):
        """Let the signals held off since arrival in: one that came meanwhile makes this rank
        leave the group it has just joined (or fail it, as its winner)."""
        try:
            let_signals_in()
        except Fatal as e:
            (self.failed if self.winner else self.leave)(str(e))
            raise

    def _find(self, groups):
        return next((g for g in groups or () if g.id == self.id), None)

    def _update(self, change, deadline=None):
        """Apply `change(groups, group)` to our group under the lock and commit; the group as
        it then is, or None if it has ended."""
        if not self.objects.lock(deadline or max(self.deadline, time.monotonic()) + 2):
            return None
        try:
            groups = self.objects.read() or []
            g = self._find(groups)
            if g is not None:
                change(groups, g)
                self.objects.commit(groups)
            return g
        finally:
            self.objects.unlock()

    def _set_slot(self, g, state):
        g.slots[self.slot][1] = state

    def failed(self, message, code=EXIT_ERROR):
        """The winner could not build the container: every waiting peer fails with `message`
        and exit code `code`, the winner's own, unless that says "killed by signal N" (128+N):
        a peer that was never signalled exits 31 then (README, "Exit codes")."""
        if code >= 128:
            code = EXIT_ERROR

        def change(groups, g):
            g.fail(f"the winner (pid {os.getpid()}) failed: {message}", code)
            self._set_slot(g, GONE)
            self.objects.wake(len(g.waiting(thorough=False)))
            if review(g, time.monotonic()):
                _end(groups, g)
        self._update(change)

    def publish(self, holder, inodes):
        """The winner's container is built: its holder and namespaces, for the peers."""
        def change(groups, g):
            checkpoint("winner", "publish")
            g.state, g.holder, g.inodes = READY, holder, inodes
            self._set_slot(g, INSIDE)
            self.objects.wake(len(g.waiting(thorough=False)))
        g = self._update(change)
        if g is not None:
            self.log.info(f"join: container ready; holder pid {holder[0]} keeps it for "
                          f"{g.expected - 1} peers (until {self.timeout:g} s after I arrived)")

    def leave(self, reason=""):
        """Out of the group without having got in (this rank failed, or was told to stop)."""
        def change(groups, g):
            self._set_slot(g, GONE)
            if review(g, time.monotonic()):
                _end(groups, g)
        self._update(change)

    def inside(self):
        """In the container. The rank that completes the group ends it. True when the holder
        is gone and ranks are still to come: this rank must fork a new one (`adopt`)."""
        orphaned = []

        def change(groups, g):
            self._set_slot(g, INSIDE)
            if review(g, time.monotonic()):
                _end(groups, g)
                self.log.info("join: cleaning up IPC resources")
            elif not ns.alive(*g.holder):
                orphaned.append(g)
        g = self._update(change)
        if g is not None:
            left = g.expected - len(g.slots) + len(g.waiting(thorough=False))
            self.log.info(f"join: {left} peers left excluding myself")
        return bool(orphaned)

    def adopt(self, holder):
        """Our new holder keeps the container for the ranks still to come, unless another rank
        was quicker (then ours goes)."""
        def change(groups, g):
            if not ns.alive(*g.holder):
                g.holder = holder
        g = self._update(change)
        if g is None or g.holder != holder:
            ns.dismiss(*holder)
        else:
            self.log.warning(f"join: group {self.tag}: its holder was gone; pid {holder[0]} "
                             "now keeps the container")

    def wait(self):
        """As a peer: until our group's container is ready; the group then. Raises `Fatal`
        with the group's reason when it fails, and at this rank's timeout."""
        checkpoint("peer", "wait")
        while True:
            g = self._find(self.objects.read())
            if g is None:       # torn by a write we raced, or over: ask under the lock
                g = self._update(lambda groups, g: None)
                if g is None:
                    raise Fatal(f"join: group {self.tag}: it ended before this rank got in")
            self.group = g
            if g.state == READY:
                return g
            if g.state == FAILED:
                self.leave()
                code, message = g.failure()
                raise Fatal(f"join: group {self.tag}: {message}", code)
            now = time.monotonic()
            if now >= self.deadline:
                self.leave()
                raise Fatal(f"join: group {self.tag}: timed out after {self.timeout:g} s "
                            f"waiting for the winner (pid {g.slots[0][0]}) to build the "
                            "container")
            if not ns.alive(g.slots[0][0], g.slots[0][2]):
                self._update(lambda groups, g: review(g, now))
                continue
            try:
                self.objects.sem.acquire(max(0.001, min(TICK, self.deadline - now)))
            except posix_ipc.BusyError:
                pass
            except posix_ipc.SignalError:    # it swallowed the exception of our handler
                if _received:
                    raise _stop(self.tag, _received[0]) from None

    def hold(self):
        """The holder's life (in its own process, inside the container): check the group each
        tick until it is over, then end it. Ends it too when told to stop, however early: it
        starts with SIGTERM, SIGINT and SIGHUP blocked (`ns.spawn_holder(blocked=SIGNALS)`),
        and lets them in only where it can end the group."""
        self.objects.reopen()           # a lock description of our own first
        checkpoint("holder", "start")
        ready = False
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _DEFERRED)
            while self._hold_tick():
                if not ready and self.group.state == READY:
                    ready = True
                    checkpoint("holder", "ready")
                time.sleep(TICK)
        except Fatal:                       # SIGTERM etc.: the container is losing its keeper
            self._update(lambda groups, g: _end(groups, g), time.monotonic() + 1)

    def _hold_tick(self):
        """One check: False once our group is over (ended by us now, or by another). A lock
        held by a stopped process is waited out, one tick at a time, until the deadline."""
        over = []
        if time.monotonic() > self.deadline + 2 * GRACE:
            return False

        def change(groups, g):
            self.group = g
            if review(g, time.monotonic(), thorough=True):
                checkpoint("holder", "end")
                _end(groups, g)
                over.append(g)
        try:
            return self._update(change, time.monotonic() + 1) is not None and not over
        except LockTimeout:
            return True
