"""Attack 6 of issue 18: another user makes you run their image, or stops your SquashFS
launches, through the storage directory they made first (/var/tmp/$USER.ch: /var/tmp is
everybody's).

Root sets up; the attacker (a second unprivileged user) makes the victim's default storage
directory, as themselves, before the victim has one; the victim (the test user) then runs their
own image by path, and a SquashFS image at the default mount point.
"""

import os
import re
import shutil
import subprocess

import pytest

from conftest import build_busybox_image, mksquashfs, world_readable_dir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: two users")

ERROR = re.compile(r"chjoin\[\d+\]: error: (.*)")
WARNING = re.compile(r"chjoin\[\d+\]: warning: (.*)")


@pytest.fixture
def storage(victim):
    """The victim's default storage directory, which must not exist during the test: one that
    earlier tests left (their SquashFS mount point) is moved aside and put back afterwards;
    what the test made there is removed, whoever made it."""
    path = f"/var/tmp/{victim.name}.ch"
    aside = None
    if os.path.lexists(path):
        aside = f"{path}.aside-{os.getpid()}"
        os.rename(path, aside)
    try:
        yield path
    finally:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
        if aside:
            os.rename(aside, path)


@pytest.fixture
def victims_image(victim):
    """The victim's own image, in a directory of theirs."""
    base = world_readable_dir("chjoin-victim-")
    root = build_busybox_image(base / "img")
    (root / "etc" / "image-file").write_text("the victim's own image\n")
    victim.own(base)
    yield root
    shutil.rmtree(base, ignore_errors=True)


def as_user(runner, *argv):
    subprocess.run(list(map(str, argv)), check=True, cwd="/", **runner.identity_kwargs())


def plant_trojan(attacker, storage, ref, modes=(0o755, 0o755)):
    """As the attacker: `storage`/img/NAME (the storage name of `ref`) holding their image."""
    entry = f"{storage}/img/{ref.replace('/', '%').replace(':', '+')}"
    as_user(attacker, "mkdir", "-p", entry)
    build_busybox_image(_Path(entry))
    (_Path(entry) / "etc" / "image-file").write_text("TROJAN\n")
    attacker.own(storage)
    os.chmod(storage, modes[0])
    os.chmod(f"{storage}/img", modes[1])
    return entry


def _Path(p):
    from pathlib import Path
    return Path(p)


def test_another_users_storage_directory_does_not_decide_what_a_path_runs(
        victim, attacker, storage, victims_image):
    """The attacker's /var/tmp/VICTIM.ch holds, under the storage name of the victim's image
    path, an image of theirs: the victim's launch by path runs the victim's own image, and says
    in one warning why the storage was not used, naming its owner."""
    plant_trojan(attacker, storage, str(victims_image))
    done = victim.run(victims_image, "--", "cat", "/etc/image-file")
    assert (done.returncode, done.stdout) == (0, "the victim's own image\n"), done.stderr
    warnings = [WARNING.fullmatch(line).group(1) for line in done.stderr.splitlines()]
    assert warnings == [f"image {victims_image} not run from storage: {storage} is owned by "
                        f"{attacker.name} (uid {attacker.uid}); taking it as a path"]


@pytest.mark.parametrize("who_writes", ["storage", "img"])
def test_a_storage_directory_others_can_write_is_not_searched(victim, storage, victims_image,
                                                             who_writes):
    """The victim's own storage, but writable by everybody (the directory or its img/): an
    entry in it could be anyone's, so a path is taken as a path there too."""
    entry = f"{storage}/img/{str(victims_image).replace('/', '%')}"
    os.makedirs(entry)
    build_busybox_image(_Path(entry))
    (_Path(entry) / "etc" / "image-file").write_text("TROJAN\n")
    victim.own(storage)
    os.chmod(storage if who_writes == "storage" else f"{storage}/img", 0o777)
    done = victim.run(victims_image, "--", "cat", "/etc/image-file")
    assert (done.returncode, done.stdout) == (0, "the victim's own image\n"), done.stderr
    path = storage if who_writes == "storage" else f"{storage}/img"
    assert f"{path} is writable by others (mode 777)" in done.stderr


def test_an_entry_of_another_user_in_your_own_storage_is_not_run(victim, attacker, storage,
                                                                 victims_image):
    """The storage and img/ are the victim's; one entry is the attacker's (made while img/ was
    open to them, say): it is not run by name, and the path is the victim's image."""
    entry = plant_trojan(attacker, storage, str(victims_image))
    os.chown(storage, victim.uid, victim.gid)
    os.chown(f"{storage}/img", victim.uid, victim.gid)
    done = victim.run(victims_image, "--", "cat", "/etc/image-file")
    assert (done.returncode, done.stdout) == (0, "the victim's own image\n"), done.stderr
    assert f"{entry} is owned by {attacker.name} (uid {attacker.uid})" in done.stderr


def test_your_own_storage_still_runs_by_name(victim, storage):
    """What ch-image made for the victim (theirs, 0755) is run by name, as ch-run does."""
    entry = f"{storage}/img/mine"
    os.makedirs(entry)
    build_busybox_image(_Path(entry))
    (_Path(entry) / "etc" / "image-file").write_text("by name\n")
    victim.own(storage)
    done = victim.run("mine", "--", "cat", "/etc/image-file")
    assert (done.returncode, done.stdout, done.stderr) == (0, "by name\n", "")


@pytest.fixture(scope="module")
def victims_squashfs():
    base = world_readable_dir("chjoin-victim-sqfs-")
    tree = build_busybox_image(base / "tree")
    (tree / "etc" / "image-file").write_text("the victim's squashfs\n")
    yield mksquashfs(tree, base / "img.sqfs")
    shutil.rmtree(base, ignore_errors=True)


def host_fuse_mounts():
    with open("/proc/self/mounts") as f:
        return [line for line in f if "squashfuse" in line]


@pytest.mark.parametrize("mode", [0o700, 0o777, 0o1777])
def test_another_users_storage_directory_fails_the_mount_point_with_its_owner(
        victim, attacker, storage, victims_squashfs, mode):
    """The attacker makes /var/tmp/VICTIM.ch first: closed to the victim (0700), or open to
    everybody (0777, 1777: they could swap the mount point for a path of theirs). The victim's
    SquashFS launch at the default mount point fails at once with one line naming the directory
    and its owner, exit 84, and leaves nothing; with -m elsewhere it runs."""
    as_user(attacker, "mkdir", storage)
    os.chmod(storage, mode)
    done = victim.run(victims_squashfs, "--", "cat", "/etc/image-file")
    assert done.returncode == 84, done.stderr
    assert [ERROR.fullmatch(line).group(1) for line in done.stderr.splitlines()] == [
        f"can't make SquashFS mount point {storage}/mnt: {storage} is owned by "
        f"{attacker.name} (uid {attacker.uid})"]
    assert host_fuse_mounts() == []
    mount = world_readable_dir("chjoin-victim-mnt-")
    victim.own(mount)
    elsewhere = victim.run("-m", mount, victims_squashfs, "--", "cat", "/etc/image-file")
    shutil.rmtree(mount, ignore_errors=True)
    assert (elsewhere.returncode, elsewhere.stdout) == (0, "the victim's squashfs\n"), \
        elsewhere.stderr


def test_a_mount_point_of_another_user_is_refused(victim, attacker, storage, victims_squashfs):
    """The storage directory is the victim's, its mnt/ the attacker's: refused, naming it."""
    os.mkdir(storage, 0o755)
    victim.own(storage)
    os.chmod(storage, 0o777)           # for the attacker to make mnt/ in it, then closed again
    as_user(attacker, "mkdir", f"{storage}/mnt")
    os.chmod(storage, 0o755)
    done = victim.run(victims_squashfs, "--", "true")
    assert done.returncode == 84, done.stderr
    assert [ERROR.fullmatch(line).group(1) for line in done.stderr.splitlines()] == [
        f"can't use SquashFS mount point {storage}/mnt: {storage}/mnt is owned by "
        f"{attacker.name} (uid {attacker.uid})"]


def test_the_default_mount_point_is_made_private_to_you(victim, storage, victims_squashfs):
    """Where there is none, chjoin makes /var/tmp/$USER.ch and its mnt/ the victim's, 0755."""
    done = victim.run(victims_squashfs, "--", "cat", "/etc/image-file")
    assert (done.returncode, done.stdout) == (0, "the victim's squashfs\n"), done.stderr
    for path in (storage, f"{storage}/mnt"):
        st = os.lstat(path)
        assert (st.st_uid, st.st_mode & 0o7777) == (victim.uid, 0o755)


@pytest.fixture(params=[0, 1], ids=["protected_symlinks=0", "protected_symlinks=1"])
def protected_symlinks(request):
    """Each test of a planted symlink runs with the kernel's fs.protected_symlinks off (as here)
    and on (Debian's default: the kernel then refuses to follow it, chjoin must say why)."""
    path = "/proc/sys/fs/protected_symlinks"
    with open(path) as f:
        before = f.read().strip()
    try:
        with open(path, "w") as f:
            f.write(str(request.param))
    except OSError as e:
        pytest.skip(f"can't set {path}: {e.strerror}")
    yield request.param
    with open(path, "w") as f:
        f.write(before)


@pytest.fixture
def victims_dir(victim):
    """A directory of the victim's (0755, in /tmp), for the attacker's symlink to lead into."""
    base = world_readable_dir("chjoin-victim-dir-")
    victim.own(base)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_a_symlink_another_user_planted_is_not_the_mount_point_path(
        victim, attacker, storage, victims_squashfs, victims_dir, protected_symlinks):
    """The attacker makes /var/tmp/VICTIM.ch a symlink into a directory of the victim's (which
    passes every check on where it leads: they could swap it for a tree of theirs between the
    check and the mount). The victim's SquashFS launch fails with one line naming the symlink
    and its owner, exit 84, mounts nothing and makes nothing where it led."""
    as_user(attacker, "ln", "-s", victims_dir, storage)
    done = victim.run(victims_squashfs, "--", "cat", "/etc/image-file")
    assert done.returncode == 84, (done.stdout, done.stderr)
    assert [ERROR.fullmatch(line).group(1) for line in done.stderr.splitlines()] == [
        f"can't make SquashFS mount point {storage}/mnt: {storage} is a symlink owned by "
        f"{attacker.name} (uid {attacker.uid})"]
    assert host_fuse_mounts() == []
    assert os.listdir(victims_dir) == []


def test_a_symlink_another_user_planted_is_not_searched_for_names(
        victim, attacker, storage, victims_image, victims_dir, protected_symlinks):
    """The attacker's symlink /var/tmp/VICTIM.ch leads to a storage directory of the victim's
    that holds an entry under the storage name of the victim's image path: the victim's launch
    by path runs that path, and one warning names the symlink and its owner."""
    entry = victims_dir / "img" / str(victims_image).replace("/", "%")
    build_busybox_image(entry)
    (entry / "etc" / "image-file").write_text("CHOSEN BY THE ATTACKER\n")
    victim.own(victims_dir)
    as_user(attacker, "ln", "-s", victims_dir, storage)
    done = victim.run(victims_image, "--", "cat", "/etc/image-file")
    assert (done.returncode, done.stdout) == (0, "the victim's own image\n"), done.stderr
    if protected_symlinks == 0:         # else the kernel hides the entry from the victim
        warnings = [WARNING.fullmatch(line).group(1) for line in done.stderr.splitlines()]
        assert warnings == [f"image {victims_image} not run from storage: {storage} is a "
                            f"symlink owned by {attacker.name} (uid {attacker.uid}); taking "
                            "it as a path"]


def test_a_storage_directory_another_user_points_at_your_images_does_not_fence_them_off(
        victim, attacker, storage, victims_image):
    """ch-run refuses a directory image anywhere inside the storage directory. The attacker's
    symlink /var/tmp/VICTIM.ch to the directory that holds the victim's image must not make
    the victim's image one "from storage": it runs by path."""
    as_user(attacker, "ln", "-s", victims_image.parent, storage)
    done = victim.run(victims_image, "--", "cat", "/etc/image-file")
    assert (done.returncode, done.stdout) == (0, "the victim's own image\n"), done.stderr


def test_your_own_symlinks_are_followed(victim, storage, victims_squashfs, victims_dir):
    """The victim's own /var/tmp/VICTIM.ch symlink into a directory of theirs, and a mount point
    reached through a second symlink of theirs: the launch runs, mounted where they lead."""
    as_user(victim, "ln", "-s", victims_dir, storage)
    as_user(victim, "mkdir", f"{victims_dir}/real-mnt")
    as_user(victim, "ln", "-s", "real-mnt", f"{victims_dir}/mnt")
    done = victim.run("-v", victims_squashfs, "--", "cat", "/etc/image-file")
    assert (done.returncode, done.stdout) == (0, "the victim's squashfs\n"), done.stderr
    assert host_fuse_mounts() == []
