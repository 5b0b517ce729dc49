"""`chjoinctl save` into a directory another user can write too (a sticky /tmp, a project's
scratch): the owner's mksquashfs writes only into a fresh private directory of theirs, so no
name the attacker planted beside the destination decides what it overwrites."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import world_readable_dir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: two users")


@pytest.fixture
def symlinks_followed():
    """fs.protected_symlinks off (as on this machine; Debian's default is on): a symlink in a
    sticky directory is followed whoever made it, the case where a planted one does harm."""
    path = "/proc/sys/fs/protected_symlinks"
    before = Path(path).read_text().strip()
    try:
        Path(path).write_text("0")
    except OSError as e:
        pytest.skip(f"can't set {path}: {e.strerror}")
    yield
    Path(path).write_text(before)


def ctl(runner, *args):
    return subprocess.run([str(Path(runner.chjoin).parent / "chjoinctl"), *map(str, args)],
                          capture_output=True, text=True, env=runner.env(), cwd="/",
                          timeout=120, **runner.identity_kwargs())


def test_save_writes_through_no_name_another_user_planted_beside_it(
        victim, attacker, image, symlinks_followed):
    """The attacker plants, in the sticky directory the victim saves into, symlinks to a file
    of the victim's under every temporary name a save could pick from its pid: the victim's
    file is unchanged, the image is saved whole, and nothing of the save is left beside it."""
    shared = world_readable_dir("chjoin-shared-")
    os.chmod(shared, 0o1777)
    precious = shared / "precious"
    precious.write_text("the victim's own data\n")
    victim.own(precious)
    name = f"save{os.getpid()}"
    try:
        created = victim.run(f"--name={name}", "-W", image, "--", "true")
        assert created.returncode == 0, created.stderr
        plant = ("import os, sys\n"
                 "last = int(open('/proc/sys/kernel/ns_last_pid').read())\n"
                 "for pid in range(last + 2, last + 400):\n"
                 "    os.symlink('precious', f'{sys.argv[1]}/.out.sqfs.{pid}.tmp')\n")
        subprocess.run([sys.executable, "-I", "-c", plant, str(shared)], check=True,
                       user=attacker.uid, group=attacker.gid, extra_groups=[])
        planted = set(os.listdir(shared)) - {"precious"}
        assert len(planted) == 398
        saved = ctl(victim, "save", name, shared / "out.sqfs")
        assert saved.returncode == 0, saved.stderr
        assert precious.read_text() == "the victim's own data\n"
        assert set(os.listdir(shared)) == {"precious", "out.sqfs"} | planted
        run = victim.run(shared / "out.sqfs", "--", "cat", "/etc/image-file")
        assert (run.returncode, run.stdout) == (0, "from the image\n"), run.stderr
    finally:
        ctl(victim, "stop", name)
        subprocess.run(["rm", "-rf", str(shared)])
