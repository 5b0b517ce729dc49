"""The record's bytes: what a rank stores parses back whole, with its tag; anything out of bounds
is `Corrupt` (one error, never an IndexError, struct.error or a huge allocation), whatever the
bytes; a copy rewritten under a lock-free reader is `Torn`."""

import random
import struct
from binascii import crc32

import pytest

from chjoin import record
from chjoin.record import Corrupt, Group, Torn

SEED = random.randrange(1 << 32)


def sample_groups():
    g = Group(4, 12.5, ["image\0/img", "uid:gid\x000:0"], [[101, record.INSIDE, 7],
                                                           [102, record.WAITING, 9]])
    g.state, g.holder, g.inodes = record.READY, (103, 8), (4026531837, 4026531840)
    f = Group(2, 3.0, [], [[201, record.GONE, 5]])
    f.fail("the winner (pid 201) failed: no image", 84)
    return [g, f]


def written(tag, groups):
    buf = bytearray(record.SIZE)
    record.store(buf, tag, groups)
    return buf


def test_what_a_rank_stores_parses_back_with_its_tag():
    buf = written("slurm.17.0", sample_groups())
    tag, groups = record.parse(bytes(buf))
    assert tag == "slurm.17.0"
    assert [(g.state, g.expected, g.slots, g.holder, g.inodes, g.terms) for g in groups] == [
        (g.state, g.expected, g.slots, g.holder, g.inodes, g.terms) for g in sample_groups()]
    assert groups[1].failure() == (84, "the winner (pid 201) failed: no image")


def test_a_named_container_is_a_group_of_size_0_with_its_keep_and_creating_launch():
    g = Group(0, 90.0, ["image\0/img"], [[301, record.INSIDE, 11]])
    g.state, g.holder, g.inodes, g.launch = record.READY, (302, 12), (5, 6), "slurm.9.1"
    [back] = record.parse(bytes(written("name.9.build", [g])))[1]
    assert back.named and (back.deadline, back.launch, back.error) == (90.0, "slurm.9.1", "")
    back.fail("the creator (pid 301) failed: no image")
    [failed] = record.parse(bytes(written("name.9.build", [back])))[1]
    assert failed.failure() == (31, "the creator (pid 301) failed: no image")
    assert failed.launch == ""


def test_a_record_nobody_wrote_is_empty():
    assert record.parse(b"") == ("", [])
    assert record.parse(bytes(record.SIZE)) == ("", [])


def test_a_long_tag_is_stored_shortened_with_a_digest_and_compares_as_stored():
    a, b = ("t" * 400 + end for end in "12")
    assert record.parse(bytes(written(a, [])))[0] == record.stored_tag(a) != record.stored_tag(b)


def current_copy(buf):
    at = 8 + (struct.unpack_from("<Q", buf)[0] & 1) * record.COPY
    return at


def reseal(buf):
    """Fix the CRC of the current copy after a test changed it, as an attacker would."""
    at = current_copy(buf)
    length = struct.unpack_from("<I", buf, at + 16)[0]
    struct.pack_into("<I", buf, at + 8, crc32(bytes(buf[at + 12:at + length])))
    return bytes(buf)


GROUP_AT = record._HEAD.size      # the first group's fixed part, in a copy


@pytest.mark.parametrize("field, offset, fmt, value, why", [
    ("state", 0, "<I", 9, "state 9"),
    ("expected", 4, "<I", 0, "size 0 \\(named\\) with 2 slots"),
    ("expected", 4, "<I", 1 << 31, "size"),
    ("zero slots", 8, "<i", 0, "0 slots"),
    ("negative slots", 8, "<i", -1, "slots"),
    ("slots past the end", 8, "<i", 4, "slots"),
    ("deadline", 12, "<q", -5, "deadline"),
    ("holder pid", 20, "<I", 1 << 30, "holder pid"),
])
def test_an_out_of_bounds_field_is_corrupt(field, offset, fmt, value, why):
    buf = written("t", sample_groups()[:1])
    struct.pack_into(fmt, buf, current_copy(buf) + GROUP_AT + offset, value)
    with pytest.raises(Corrupt, match=why):
        record.parse(reseal(buf))


def test_a_slot_with_a_bad_state_or_pid_is_corrupt():
    for offset, value, why in ((4, 0, "slot state 0"), (0, 0, "slot pid 0")):
        buf = written("t", sample_groups()[:1])
        slot = current_copy(buf) + GROUP_AT + record._FIXED + offset
        struct.pack_into("<I", buf, slot, value)
        with pytest.raises(Corrupt, match=why):
            record.parse(reseal(buf))


def test_a_wrong_crc_is_torn_and_other_heads_are_corrupt():
    buf = written("t", sample_groups())
    buf[current_copy(buf) + GROUP_AT + 40] ^= 1
    with pytest.raises(Torn):
        record.parse(bytes(buf))
    for offset, fmt, value in ((0, "<Q", 7), (8, "<8s", b"chjoin\0x")):
        bad = written("t", sample_groups())
        struct.pack_into(fmt, bad, offset if offset == 0 else current_copy(bad), value)
        with pytest.raises(Corrupt):
            record.parse(bytes(bad))
    with pytest.raises(Corrupt, match="size"):
        record.parse(bytes(buf)[:4096])


def test_random_damage_is_corrupt_or_parses_never_anything_else():
    """Seeded: flip bytes, then reseal the CRC so that the checks behind it are reached."""
    rng = random.Random(SEED)
    good = written("slurm.1.0", sample_groups())
    at = current_copy(good)
    length = struct.unpack_from("<I", good, at + 16)[0]
    for _ in range(3000):
        buf = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            buf[at + 12 + rng.randrange(length - 12)] = rng.randrange(256)
        data = reseal(buf) if rng.random() < 0.9 else bytes(buf)
        try:
            tag, groups = record.parse(data)
        except Corrupt:
            continue
        except Exception as e:                  # noqa: BLE001 -- the point of the test
            pytest.fail(f"seed {SEED}: {type(e).__name__}: {e}")
        for g in groups:
            assert 1 <= len(g.slots) <= max(g.expected, 1) <= record.MAX_PEERS, SEED
            assert g.expected or len(g.slots) == 1, SEED


def test_too_many_ranks_for_one_copy_is_refused_when_stored():
    groups = [Group(4096, 1.0, [], [[i + 1, record.WAITING, 1] for i in range(4096)])
              for _ in range(5)]
    with pytest.raises(ValueError):
        record.encode("t", groups)


@pytest.mark.parametrize("error", ["99999999\0huge", "256\0past a byte", "-1\0negative",
                                   "0" * 400 + "\0long"])
def test_a_failed_groups_exit_code_is_a_byte_or_the_error_code(error):
    """A waiting rank exits with the code a failed group names: a user's record can't make it
    anything but an exit status (31 otherwise), nor make parsing it slow."""
    g = Group(1, 1.0, [], [[5, record.WAITING, 6]])
    g.state, g.error = record.FAILED, error
    (tag, (parsed,)) = record.parse(written("t", [g]))
    assert parsed.failure()[0] == 31
