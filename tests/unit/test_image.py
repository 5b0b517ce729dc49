"""SquashFS images, the pure parts: what the superblock says about a file, the -m option."""

import struct

from chjoin.cli import normalize, parse
from chjoin.image import default_mount, squashfs_problem


def superblock(major=4, minor=0, block_log=17, bytes_used=4096):
    """The first 96 bytes of a SquashFS file with these fields."""
    head = struct.pack("<4sIIIIHHHHHHQQ", b"hsqs", 1, 0, 1 << block_log, 0, 1, block_log, 0, 1,
                       major, minor, 0, bytes_used)
    return head.ljust(96, b"\0")


def test_a_sound_superblock_has_no_problem():
    assert squashfs_problem(superblock(), 4096) == ""


def test_another_magic_is_not_squashfs():
    assert squashfs_problem(b"sqsh" + superblock()[4:], 4096) == "not a SquashFS file"
    assert squashfs_problem(b"hsqs", 4) == "not a SquashFS file"


def test_only_version_4_0_is_supported():
    assert squashfs_problem(superblock(major=3, minor=1), 4096) == \
        "SquashFS version 3.1; only 4.0 is supported"


def test_a_block_size_that_is_not_its_log_is_corrupt():
    head = bytearray(superblock())
    head[12:16] = (12345).to_bytes(4, "little")
    assert squashfs_problem(bytes(head), 4096).startswith("corrupt superblock: block size 12345")


def test_a_file_shorter_than_its_superblock_says_is_truncated():
    assert squashfs_problem(superblock(bytes_used=10000), 4096) == \
        "truncated: 4096 bytes, its superblock says 10000"


def test_mount_option_takes_a_value_like_ch_run():
    assert normalize(["-m", "/mnt/x", "img.sqfs", "--", "true"])[0] == "--mount=/mnt/x"
    options, image, _ = parse(normalize(["--mount", "/m", "img.sqfs", "--", "true"]))
    assert (options["mount"], image) == ("/m", "img.sqfs")


def test_default_mount_point_is_ch_runs():
    assert default_mount("alice") == "/var/tmp/alice.ch/mnt"
