"""The rendezvous record's byte layout, and its bounded parse.

Ranks read and write the record of their tag; root (chjoinctl ps/gc, the Slurm epilog) reads
records that users wrote, in a child that has dropped to the owner's ids. Either way the bytes
are untrusted: `parse` takes one snapshot and checks every field (the index, magic, version,
lengths, counts, states, pids, offsets) before it believes it, and raises `Corrupt` for
anything out of bounds. Nothing here touches the system.

The object: the index of the current copy (0 or 1), then two copies. A copy: its head (magic,
CRC, version, length, group count, and the tag, so that nobody needs to read a tag from an
object's name), then its groups, each a fixed part, its terms ("label\\0text", long ones
shortened by a digest), its error, and its slots (pid, state, start time), the winner's first.

A named container (`chjoin --name`, chjoin.named) is a group of size 0: no fixed count of ranks,
one slot (its creator), a holder that stays. Its deadline field holds how long it is kept after
its last process exits (`--keep`, 0: until stopped), and its error field, while it serves, the
tag of the launch that created it (whose other ranks may attach under `:create`).
"""

import struct
from binascii import crc32

from chjoin import ns
from chjoin.log import EXIT_ERROR

MAGIC = b"chjoin\0t"
VERSION = 5
MAX_PEERS = 4096
MAX_GROUPS = 16
PID_MAX = 1 << 22                   # the kernel's limit for /proc/sys/kernel/pid_max

SETUP, READY, FAILED = 1, 2, 3      # a group's states
WAITING, INSIDE, GONE = 1, 2, 3     # a slot's states

_CURRENT = struct.Struct("<Q")
_TAG = 256
_HEAD = struct.Struct(f"<8sIIII{_TAG}s")    # magic crc version length groups tag
_GROUP = struct.Struct("<IIiqIQQQ")         # state expected slots deadline_ns holder start user mnt
_TERM = struct.Struct("<256s")
_TERMS = 4
_ERROR = 512
_SLOT = struct.Struct("<IIQ")
_FIXED = _GROUP.size + _TERMS * _TERM.size + _ERROR
COPY = _HEAD.size + MAX_GROUPS * _FIXED + 4 * MAX_PEERS * _SLOT.size
SIZE = _CURRENT.size + 2 * COPY


class Corrupt(ValueError):
    """A record that fails a check: its message says which."""


class Torn(Corrupt):
    """A copy whose CRC is wrong: read without the lock while a rank rewrote it, it is worth
    reading again; read under the lock, it is as corrupt as any other."""


class Group:
    """One container of a tag, as plain values."""

    def __init__(self, expected=0, deadline=0.0, terms=(), slots=()):
        self.state, self.expected, self.deadline = SETUP, expected, deadline
        self.holder = (0, 0)          # pid, start time
        self.inodes = (0, 0)          # user and mount namespace
        self.terms = list(terms)      # ["label\0text"], as `stored_terms` makes them
        self.error = ""
        self.slots = [list(s) for s in slots]     # [[pid, state, start]], the winner first
        self.launch = ""              # a named container's creating launch (its tag)

    @property
    def named(self):
        """A named container (`--name`): size 0, kept by its holder until stopped."""
        return self.expected == 0

    @property
    def id(self):
        """The winner's (pid, start time): unique for as long as the machine runs."""
        return (self.slots[0][0], self.slots[0][2])

    def fail(self, message, code=EXIT_ERROR):
        """The group can't serve: `message` for its waiting ranks, which exit with `code` (84
        when the winner's SquashFS image failed, as the winner does)."""
        if self.state != FAILED:
            self.state, self.error = FAILED, f"{code}\0{message}"[:_ERROR]

    def failure(self):
        """(exit code, message) of a FAILED group."""
        code, _, message = self.error.partition("\0")
        if code.isascii() and code.isdigit() and len(code) <= 3 and int(code) < 256 and message:
            return int(code), message
        return EXIT_ERROR, self.error

    def waiting(self, thorough):
        """Slots of ranks that arrived and are neither in nor out; with `thorough`, only the
        live ones (a dead rank's slot says WAITING forever)."""
        return [s for s in self.slots
                if s[1] == WAITING and (not thorough or ns.alive(s[0], s[2]))]


def _text(raw):
    return bytes(raw).rstrip(b"\0").decode(errors="replace")


def _check(ok, what):
    if not ok:
        raise Corrupt(what)


def parse(buf):
    """(tag, [Group]) of the current copy of record `buf` (bytes, or a buffer another process
    may be writing: one snapshot of the copy is taken first); ("", []) for a record nobody has
    written yet (all zeros, or empty). Raises `Torn` for a wrong CRC and `Corrupt` for any other
    field out of bounds."""
    if len(buf) == 0:
        return "", []
    _check(len(buf) == SIZE, f"size {len(buf)}, not {SIZE}")
    index = _CURRENT.unpack_from(buf)[0]
    _check(index in (0, 1), f"copy index {index}")
    at = _CURRENT.size + index * COPY
    length = _HEAD.unpack_from(buf, at)[3]
    if length == 0 and not any(buf[:_CURRENT.size + _HEAD.size]) and index == 0:
        return "", []
    _check(_HEAD.size <= length <= COPY, f"length {length}")
    snap = bytes(buf[at:at + length])
    magic, crc, version, length, count, tag = _HEAD.unpack_from(snap)
    _check(magic == MAGIC, "not a chjoin record")
    _check(version == VERSION, f"version {version}, not {VERSION}")
    if crc32(snap[12:]) != crc:
        raise Torn("wrong CRC")
    _check(length == len(snap), f"length {length}")
    _check(count <= MAX_GROUPS, f"{count} groups")
    groups, pos = [], _HEAD.size
    for i in range(count):
        _check(pos + _FIXED <= length, f"group {i} past the end")
        state, expected, nslots, deadline, pid, start, user, mnt = _GROUP.unpack_from(snap, pos)
        _check(state in (SETUP, READY, FAILED), f"group {i}: state {state}")
        _check(expected <= MAX_PEERS, f"group {i}: size {expected}")
        _check(1 <= nslots <= expected or (expected == 0 and nslots == 1),
               f"group {i}: {nslots} slots of {expected}" if expected else
               f"group {i}: size 0 (named) with {nslots} slots")
        _check(deadline >= 0, f"group {i}: deadline {deadline}")
        _check(0 <= pid < PID_MAX, f"group {i}: holder pid {pid}")
        g = Group(expected, deadline / 1e9)
        g.state, g.holder, g.inodes = state, (pid, start), (user, mnt)
        pos += _GROUP.size
        for _ in range(_TERMS):
            term = _text(snap[pos:pos + _TERM.size])
            if term:
                g.terms.append(term)
            pos += _TERM.size
        g.error = _text(snap[pos:pos + _ERROR])
        if g.named and state != FAILED:
            g.launch, g.error = g.error, ""
        pos += _ERROR
        _check(pos + nslots * _SLOT.size <= length, f"group {i}: {nslots} slots past the end")
        for _ in range(nslots):
            slot = list(_SLOT.unpack_from(snap, pos))
            _check(0 < slot[0] < PID_MAX and slot[2] > 0, f"group {i}: slot pid {slot[0]}")
            _check(slot[1] in (WAITING, INSIDE, GONE), f"group {i}: slot state {slot[1]}")
            g.slots.append(slot)
            pos += _SLOT.size
        groups.append(g)
    _check(pos == length, f"{length - pos} bytes after the last group")
    return _text(tag), groups


def encode(tag, groups):
    """The bytes of one copy holding `groups` of `tag`; ValueError if they don't fit."""
    data = bytearray(_HEAD.size)
    for g in groups:
        data += _GROUP.pack(g.state, g.expected, len(g.slots), int(g.deadline * 1e9),
                            *g.holder, *g.inodes)
        for i in range(_TERMS):
            data += _TERM.pack(g.terms[i].encode() if i < len(g.terms) else b"")
        error = g.launch if g.named and g.state != FAILED else g.error
        data += error.encode()[:_ERROR].ljust(_ERROR, b"\0")
        for slot in g.slots:
            data += _SLOT.pack(*slot)
    if len(data) > COPY:
        raise ValueError("too many ranks waiting on one tag at once")
    _HEAD.pack_into(data, 0, MAGIC, 0, VERSION, len(data), len(groups),
                    stored_tag(tag).encode())
    struct.pack_into("<I", data, 8, crc32(data[12:]))
    return bytes(data)


def idle_copy(buf):
    """(offset of the copy not current in `buf`, the index that makes it current)."""
    idle = (_CURRENT.unpack_from(buf)[0] & 1) ^ 1
    return _CURRENT.size + idle * COPY, idle


def index_bytes(index):
    """The bytes that make copy `index` current (written last, at offset 0)."""
    return _CURRENT.pack(index)


def store(buf, tag, groups):
    """Write `groups` of `tag` into the idle copy of `buf`, then make it the current one by one
    aligned 8-byte store: a writer killed meanwhile leaves the current copy intact."""
    data = encode(tag, groups)
    at, index = idle_copy(buf)
    buf[at:at + len(data)] = data
    _CURRENT.pack_into(buf, 0, index)


def _shorten(text, size):
    """`text` if it fits in `size` bytes, else its start and a digest of the whole (only then
    is `hashlib`, 2.5 ms, imported), so that two different texts never look the same."""
    if len(text.encode()) <= size:
        return text
    import hashlib
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    return f"{text.encode()[:size - 40].decode(errors='ignore')}...~{digest}"


def stored_tag(tag):
    """The tag as the record's head stores it (and `chjoinctl ps --tag` compares it)."""
    return _shorten(tag, _TAG - 1)


def stored_terms(terms):
    """[(label, text)] of what peers must agree on, as the record stores them: "label\0text",
    compared whole. A term too long for its field (a long image path, many binds) keeps its
    start and gets a digest of the whole."""
    return [_shorten(f"{label}\0{text}", _TERM.size) for label, text in terms]
