"""The rendezvous: one rank of a group builds the container, the others join it.

Two objects per user and group, both created 0600 and owner-checked: a shared-memory record
`/dev/shm/chjoin-<uid>-<tag>` and a semaphore `/dev/shm/sem.chjoin-<uid>-<tag>`.

- Mutual exclusion is flock(2) on the record, not the semaphore: the kernel drops the lock when
  its holder dies, so a rank killed inside the critical section cannot wedge the tag (ch-run's
  semaphore-mutex stays at 0 forever). Only reads and small writes of the record happen under it.
- The semaphore only wakes waiters. Every wait also ends after a tick and re-reads the record,
  so a lost wake-up costs one tick, and a dead winner or holder is noticed within a second.
- The record is written whole, with a CRC: a write torn by a kill reads as corrupt and is
  replaced, like any stale record, by the next arrival.

A group's life (one *generation* of the record): the first arrival wins (state SETUP) and builds
the container while the others arrive; the winner publishes its holder's pid and namespace
inodes (READY); when all `expected` ranks have arrived, each joins and marks itself INSIDE; the
last one in removes both objects and dismisses the holder. A rank that fails, times out or sees
a member die marks the generation FAILED with the reason, which every member then reports; the
last live member out removes the objects. Ranks that find the name busy with another group (a
different configuration or count, or a full group) wait for it to end and then start their own.
"""

import _signal as signal    # `signal` is this plus enums, whose import costs every rank 4 ms
import fcntl
import mmap
import os
import struct
import time
from binascii import crc32

import posix_ipc

from chjoin import ns
from chjoin.log import Fatal, checkpoint

MAGIC = b"chjoin\0r"
VERSION = 2
MAX_PEERS = 4096
TICK = 0.1            # seconds between re-reads of the record while waiting
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT", signal.SIGHUP: "SIGHUP"}
_DEFERRED = set(_NAMES)   # leave the group when received; held off while the lock is held

# Record states, and the states of one member's slot.
FREE, SETUP, READY, FAILED, DONE = range(5)
WAITING, INSIDE, GONE = 1, 2, 3

# head: magic crc version generation state closed expected arrived holder_pid holder_start
#       user_ns mnt_ns; then the terms (digest, "label\0text"), the error text, the slots
_HEAD = struct.Struct("<8sIIQIIIIIQQQ")
_TERM = struct.Struct("<256s")      # "label\0text", a long one shortened by a digest
_TERMS = 4
_ERROR = 512
_SLOT = struct.Struct("<IIQ")            # pid state start
_SLOTS_AT = _HEAD.size + _TERMS * _TERM.size + _ERROR
SIZE = _SLOTS_AT + MAX_PEERS * _SLOT.size

def object_name(uid, tag):
    """`/chjoin-<uid>-<tag>`, with the tag kept to characters every POSIX IPC name allows;
    a tag that had to change, or is long, gets a digest so that different tags never meet."""
    safe = "".join(c if c.isalnum() or c in "._-@+" else "_" for c in tag)
    if safe != tag or len(safe) > 64:
        import hashlib
        safe = f"{safe[:40]}~{hashlib.sha256(tag.encode()).hexdigest()[:16]}"
    return f"/chjoin-{uid}-{safe}"


class Record:
    """The shared record of one group name, as plain values."""

    def __init__(self):
        self.generation, self.state, self.expected, self.arrived = 0, FREE, 0, 0
        self.closed = 0               # 1 once the names are removed: the record is history
        self.holder = (0, 0)          # pid, start time
        self.inodes = (0, 0)          # user and mount namespace
        self.terms = []               # ["label\0text"], as `stored_terms` makes them
        self.error = ""
        self.slots = []               # [[pid, state, start]], the winner first

    @classmethod
    def load(cls, buf):
        """The record in `buf`, or None when it is empty, foreign, or torn."""
        head = _HEAD.unpack_from(buf)
        magic, crc, version, expected = head[0], head[1], head[2], head[6]
        if magic != MAGIC or version != VERSION or expected > MAX_PEERS:
            return None
        end = _SLOTS_AT + expected * _SLOT.size
        if crc32(buf[12:end]) != crc or head[7] > expected:
            return None
        rec = cls()
        (_, _, _, rec.generation, rec.state, rec.closed, rec.expected, rec.arrived, pid, start,
         user_ns, mnt_ns) = head
        rec.holder, rec.inodes = (pid, start), (user_ns, mnt_ns)
        for i in range(_TERMS):
            term = _TERM.unpack_from(buf, _HEAD.size + i * _TERM.size)[0].rstrip(b"\0")
            if term:
                rec.terms.append(term.decode(errors="replace"))
        at = _HEAD.size + _TERMS * _TERM.size
        rec.error = bytes(buf[at:at + _ERROR]).rstrip(b"\0").decode(errors="replace")
        rec.slots = [list(_SLOT.unpack_from(buf, _SLOTS_AT + i * _SLOT.size))
                     for i in range(rec.arrived)]
        return rec

    def store(self, buf):
        """Write the whole record in one copy, CRC included."""
        data = bytearray(_SLOTS_AT + self.expected * _SLOT.size)
        _HEAD.pack_into(data, 0, MAGIC, 0, VERSION, self.generation, self.state, self.closed,
                        self.expected, self.arrived, *self.holder, *self.inodes)
        for i, term in enumerate(self.terms[:_TERMS]):
            _TERM.pack_into(data, _HEAD.size + i * _TERM.size, term.encode())
        at = _HEAD.size + _TERMS * _TERM.size
        error = self.error.encode()[:_ERROR]
        data[at:at + len(error)] = error
        for i, slot in enumerate(self.slots):
            _SLOT.pack_into(data, _SLOTS_AT + i * _SLOT.size, *slot)
        struct.pack_into("<I", data, 8, crc32(data[12:]))
        buf[:len(data)] = data

    def waiting(self):
        """Members that arrived, have not got in or out yet, and are still alive."""
        return [s for s in self.slots if s[1] == WAITING and ns.alive(s[0], s[2])]

    def fail(self, message):
        if self.state != FAILED:
            self.state, self.error = FAILED, message[:_ERROR]


def stored_terms(terms):
    """[(label, text)] of what peers must agree on, as the record stores them: "label\0text",
    compared whole. A term too long for its field (a long image path, many binds) keeps its
    start and gets a digest of the whole; only then is `hashlib` (2.5 ms) imported."""
    stored = []
    for label, text in terms:
        term = f"{label}\0{text}"
        if len(term.encode()) > _TERM.size:
            import hashlib
            digest = hashlib.sha256(term.encode()).hexdigest()[:32]
            term = f"{term.encode()[:_TERM.size - 40].decode(errors='ignore')}...~{digest}"
        stored.append(term)
    return stored


def difference(rec, expected, terms):
    """What makes a rank with `expected` and `terms` unfit for group `rec`, or "" if nothing."""
    if rec.expected != expected:
        return f"group size {rec.expected}, this rank {expected}"
    for theirs, mine in zip(rec.terms, terms):
        if theirs != mine:
            label, _, text = theirs.partition("\0")
            return f"{label} {text}, this rank {mine.partition(chr(0))[2]}"
    return ""


def repair(rec, thorough):
    """Recognise a generation that can no longer complete, and mark it FAILED with the reason.

    `thorough` also checks every member, not only the winner and the container's keepers."""
    if rec.state == SETUP and not ns.alive(rec.slots[0][0], rec.slots[0][2]):
        rec.fail(f"the winner (pid {rec.slots[0][0]}) died while building the container")
    if rec.state != READY:
        return
    complete = rec.arrived == rec.expected
    if not complete and thorough:
        for pid, state, start in rec.slots:
            if state in (WAITING, INSIDE) and not ns.alive(pid, start):
                rec.fail(f"rank pid {pid} died before all {rec.expected} ranks arrived")
                return
    if complete and not rec.waiting():
        rec.state = DONE
    elif rec.state == READY and not keepers(rec):
        rec.fail(f"the container is gone: its holder (pid {rec.holder[0]}) and every rank in "
                 "it exited before the others joined")


def needs_repair(rec, thorough):
    """Whether `repair` would change `rec`: decided on a copy read without the lock, so that
    waiting ranks take the lock only when there is something to repair."""
    before = _before(rec)
    repair(rec, thorough)
    return _before(rec) != before


def keepers(rec):
    """Live processes that hold the container's namespaces: the holder, then members inside."""
    found = [rec.holder] if rec.holder[0] and ns.alive(*rec.holder) else []
    return found + [(s[0], s[2]) for s in rec.slots if s[1] == INSIDE and ns.alive(s[0], s[2])]


class Objects:
    """The open record (locked while in use) and semaphore of one group name."""

    def __init__(self, name, deadline):
        self.name = name
        self.path = f"/dev/shm{name}"
        self.fd = self.map = self.sem = None
        for _ in range(1000):
            self.fd = self._open_record()
            self.lock(deadline)
            if os.fstat(self.fd).st_nlink:
                break
            os.close(self.fd)      # removed by the last one out while we waited: start over
        if os.fstat(self.fd).st_size < SIZE:
            os.ftruncate(self.fd, SIZE)
        self.map = mmap.mmap(self.fd, SIZE)
        self.sem = self._open_semaphore()

    def _open_record(self):
        try:
            fd = posix_ipc.SharedMemory(self.name, posix_ipc.O_CREAT, mode=0o600).fd
        except posix_ipc.Error as e:
            raise Fatal(self._foreign(self.path, e)) from None
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            os.close(fd)
            raise Fatal(self._foreign(self.path, None))
        return fd

    def _open_semaphore(self):
        path = f"/dev/shm/sem.{self.name[1:]}"
        try:
            sem = posix_ipc.Semaphore(self.name, posix_ipc.O_CREAT, mode=0o600, initial_value=0)
        except posix_ipc.Error as e:
            raise Fatal(self._foreign(path, e)) from None
        st = os.stat(path)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise Fatal(self._foreign(path, None))
        return sem

    @staticmethod
    def _foreign(path, err):
        try:
            st = os.stat(path)
            owner = f"owned by uid {st.st_uid}, mode {st.st_mode & 0o777:o}"
        except OSError:
            owner = str(err)
        return f"join: can't use {path}: {owner}; another user holds this group's name"

    def lock(self, deadline, fd=None):
        """Take the record's lock, blocking the signals that make a rank leave while we hold
        it, so that no record is ever left half written."""
        delay = 0.0002
        while True:
            try:
                fcntl.flock(fd or self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
                return
            except BlockingIOError:
                pass
            if time.monotonic() > deadline:
                raise Fatal(f"join: timed out waiting for the lock on {self.path}")
            time.sleep(delay)
            delay = min(delay * 2, 0.005)

    def unlock(self, fd=None):
        fcntl.flock(fd or self.fd, fcntl.LOCK_UN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _DEFERRED)

    def read(self):
        return Record.load(self.map)

    def wake(self, count):
        for _ in range(count):
            self.sem.release()

    def remove(self):
        """Unlink both names (under the lock): the next arrival starts from nothing."""
        for unlink in (posix_ipc.unlink_semaphore, posix_ipc.unlink_shared_memory):
            try:
                unlink(self.name)
            except posix_ipc.ExistentialError:
                pass

    def close(self):
        try:
            self.unlock()
        except OSError:
            pass
        os.close(self.fd)


def settle(objects, rec, before):
    """Store `rec` after a change made under the lock; wake the waiters if the state moved on or
    the group became complete; once the generation is over, remove the names and the holder."""
    # DONE once nobody waits; a waiter that died is the holder's to find (`repair`, each tick)
    if rec.state == READY and rec.arrived == rec.expected and not _waiting_slots(rec):
        rec.state = DONE
    over = rec.state == DONE or (rec.state == FAILED and not rec.waiting())
    if over:
        rec.closed = 1
    rec.store(objects.map)
    complete = rec.arrived == rec.expected and before[1] != rec.arrived
    if rec.state != before[0] or complete:
        objects.wake(sum(1 for s in rec.slots if s[1] == WAITING))
    if over and not before[2]:
        objects.remove()
        if rec.holder[0] and rec.holder[0] != os.getpid():
            ns.dismiss(*rec.holder)


def _waiting_slots(rec):
    return any(state == WAITING for _, state, _ in rec.slots)


def _before(rec):
    return (rec.state, rec.arrived, rec.closed)


def stop_on_signals(tag):
    """While this rank takes part in group `tag`, SIGTERM, SIGINT and SIGHUP (scancel, Ctrl-C,
    a launcher going away) raise `Fatal` (exit 128+N), so that it leaves the group cleanly
    rather than die with its slot held. They are held off while we hold the record's lock;
    the exec of the command resets them."""
    def stop(signum, _frame):
        _received.append(signum)
        raise _stop(tag, signum)

    for signum in _DEFERRED:
        signal.signal(signum, stop)


_received = []


def _stop(tag, signum):
    return Fatal(f"join: group {tag}: {_NAMES[signum]} received before the "
                 "container was ready", 128 + signum)


def arrive(tag, expected, terms, timeout, log):
    """Enter the group `tag` of `expected` ranks: as its winner, or as a peer. Waits (up to
    `timeout` seconds) while the name is busy with another group; returns a `Member`."""
    name = object_name(os.geteuid(), tag)
    deadline = time.monotonic() + timeout
    me = [os.getpid(), WAITING, ns.start_time(os.getpid())]
    terms = stored_terms(terms)
    said = ""
    while True:
        checkpoint("any", "arrive")
        objects = Objects(name, deadline)
        try:
            rec = objects.read()
            checkpoint("any", "locked")
            if rec is not None and not rec.closed:
                before = _before(rec)
                repair(rec, thorough=False)     # members: the holder checks them each tick
                if _before(rec) != before:
                    settle(objects, rec, before)
            if rec is None or rec.closed or rec.state in (FREE, DONE):
                generation = struct.unpack_from("<Q", objects.map, 16)[0] + 1
                rec = Record()
                rec.generation, rec.state, rec.expected = generation, SETUP, expected
                rec.terms = terms
                rec.arrived, rec.slots = 1, [me]
                rec.store(objects.map)
                objects.holder_fd = os.open(f"/proc/self/fd/{objects.fd}", os.O_RDWR | os.O_CLOEXEC)
                return Member(objects, rec, 0, tag, timeout, deadline, log)
            if rec.state == FAILED:
                reason = "its last group failed and its ranks are still leaving"
            elif difference(rec, expected, terms):
                reason = f"its group has {difference(rec, expected, terms)}"
            elif rec.arrived >= rec.expected:
                reason = f"all {rec.expected} ranks of its group have arrived"
            else:
                before = _before(rec)
                rec.slots.append(me)
                rec.arrived += 1
                settle(objects, rec, before)
                return Member(objects, rec, rec.arrived - 1, tag, timeout, deadline, log)
        finally:
            objects.unlock()
        objects.close()
        # a failed group's ranks leave within a tick or two: say so only if it lasts
        passing = rec.state == FAILED and time.monotonic() < deadline - timeout + 1
        if reason != said and not passing:
            log.warning(f"join: tag {tag} is busy: {reason}; waiting for it to finish")
            said = reason
        if time.monotonic() + TICK > deadline:
            raise Fatal(f"join: timed out after {timeout:g} s: tag {tag} stayed busy: {reason}")
        time.sleep(TICK)


class Member:
    """This rank's place in one generation of a group."""

    def __init__(self, objects, rec, slot, tag, timeout, deadline, log):
        self.objects, self.generation, self.slot = objects, rec.generation, slot
        self.tag, self.timeout, self.deadline, self.log = tag, timeout, deadline, log
        self.expected = rec.expected
        self.winner = slot == 0

    def _update(self, change, fd=None, deadline=None):
        """Apply `change(rec)` to this generation's record under the lock; None if it is gone."""
        self.objects.lock(deadline or max(self.deadline, time.monotonic()) + 2, fd)
        try:
            rec = self.objects.read()
            if rec is None or rec.generation != self.generation:
                return None
            before = _before(rec)
            change(rec)
            if not before[2]:
                settle(self.objects, rec, before)
            return rec
        finally:
            self.objects.unlock(fd)

    def _set_slot(self, rec, state):
        rec.slots[self.slot][1] = state

    def failed(self, message):
        """The winner could not build the container: every peer fails with `message`."""
        def change(rec):
            rec.fail(f"the winner (pid {os.getpid()}) failed: {message}")
            self._set_slot(rec, GONE)
        self._update(change)

    def publish(self, holder, inodes):
        """The winner's container is built: its holder and namespaces, for the peers."""
        def change(rec):
            if rec.state == SETUP:
                rec.state, rec.holder, rec.inodes = READY, holder, inodes
                self._set_slot(rec, INSIDE)
        rec = self._update(change)
        if rec is not None:
            self.log.info(f"join: container ready; {rec.expected - 1} peers left excluding myself")

    def leave(self, reason=""):
        """Out of the group without joining (failure): the group fails with `reason` if it is
        not yet complete; the last live member out cleans up."""
        def change(rec):
            self._set_slot(rec, GONE)
            if rec.arrived < rec.expected and rec.state in (SETUP, READY):
                why = reason.removeprefix(f"join: group {self.tag}: ")
                rec.fail(f"rank pid {os.getpid()} left before all {rec.expected} ranks arrived"
                         f"{': ' + why if why else ''}")
        self._update(change)

    def inside(self):
        """In the container: the last rank in removes the names and dismisses the holder."""
        rec = self._update(lambda rec: self._set_slot(rec, INSIDE))
        if rec is not None:
            left = sum(1 for s in rec.slots if s[1] == WAITING) + rec.expected - rec.arrived
            self.log.info(f"join: {left} peers left excluding myself")
            if rec.closed:
                self.log.info("join: cleaning up IPC resources")

    def wait(self):
        """Until every rank has arrived and the container is ready; the record then. Raises
        `Fatal` with the group's reason when it fails, and at the timeout."""
        checkpoint("winner" if self.winner else "peer", "wait")
        last_check = time.monotonic()
        while True:
            rec = self.objects.read() or self._update(lambda rec: None)
            if rec is None:
                raise Fatal(f"join: group {self.tag}: its record was lost (a rank was killed "
                            "while writing it, or it was reset)")
            if rec.state == FAILED:
                self.leave()
                raise Fatal(f"join: group {self.tag}: {rec.error}")
            if rec.arrived == rec.expected and rec.state in (READY, DONE):
                return rec
            now = time.monotonic()
            if now >= self.deadline:
                self._time_out()
            if now - last_check >= TICK:
                last_check = now
                if needs_repair(rec, thorough=self.winner):
                    self._update(lambda rec: repair(rec, thorough=self.winner))
                continue
            try:
                self.objects.sem.acquire(max(0.001, min(TICK, self.deadline - now)))
            except posix_ipc.BusyError:
                pass
            except posix_ipc.SignalError:    # it swallowed the exception of our handler
                if _received:
                    raise _stop(self.tag, _received[-1]) from None

    def _time_out(self):
        def change(rec):
            if rec.state in (SETUP, READY) and rec.arrived < rec.expected:
                rec.fail(f"timed out after {self.timeout:g} s with {rec.arrived} of "
                         f"{rec.expected} ranks arrived")
            self._set_slot(rec, GONE)
        rec = self._update(change)
        raise Fatal(f"join: group {self.tag}: {rec.error if rec else 'timed out'}")

    def holding(self):
        """In the holder, each tick: whether the container must still be kept alive."""
        fd = self.objects.holder_fd

        def change(rec):
            repair(rec, thorough=True)
            if time.monotonic() > self.deadline + 2 and rec.state in (SETUP, READY):
                rec.fail(f"timed out after {self.timeout:g} s: the holder gave up")
        rec = self._update(change, fd, time.monotonic() + TICK * 10)
        if rec is not None and rec.state == READY:
            checkpoint("holder", "ready")
        return rec is not None and not rec.closed and rec.state in (SETUP, READY)

    def stay_until_all_inside(self, record):
        """The winner, when the holder is gone: keep the container alive ourselves until every
        live peer is in (or the timeout), since our command may exit at once."""
        if record.state == DONE or (record.holder[0] and ns.alive(*record.holder)):
            return
        rec = self._update(lambda rec: None)
        if rec is None or rec.closed or rec.state != READY:
            return                  # everyone got in, and the last one dismissed the holder
        self.log.warning(f"join: holder pid {record.holder[0]} is gone; the winner keeps the "
                         "container until its peers are in")
        while time.monotonic() < self.deadline + 2:
            rec = self._update(lambda rec: None)
            if rec is None or rec.closed or rec.state != READY:
                return
            time.sleep(TICK / 10)
