"""--seccomp, ch-run 0.45's root emulation: chown, setgroups, the set*id calls and mknod of a
device "succeed" without effect, a FIFO is really made, and without --seccomp each fails; the
same in every rank of a joined group, peers included (ch-run 0.45.2 installs it in the winner
only). Root and the unprivileged test user."""

import os

import pytest

from conftest import HOST_BINDS, world_readable_dir

# Run in an image of this host (its Python): each call's outcome, one line each.
PROBE = r"""
import os, stat
def attempt(name, call):
    try:
        call()
        print(name, "ok")
    except OSError as e:
        print(name, e.strerror)
attempt("chown", lambda: os.chown("/tmp/probe-file", 1234, 1234))
attempt("setgroups", lambda: os.setgroups([]))
attempt("setuid", lambda: os.setuid(4321))
attempt("setresgid", lambda: os.setresgid(4321, 4321, 4321))
attempt("mknod-chr", lambda: os.mknod("/tmp/probe-chr", 0o600 | stat.S_IFCHR, os.makedev(1, 3)))
attempt("mknod-blk", lambda: os.mknod("/tmp/probe-blk", 0o600 | stat.S_IFBLK, os.makedev(7, 0)))
attempt("mknod-fifo", lambda: os.mknod("/tmp/probe-fifo", 0o600 | stat.S_IFIFO))
print("uid", os.getuid(), "owner", os.stat("/tmp/probe-file").st_uid)
print("chr", os.path.exists("/tmp/probe-chr"), "blk", os.path.exists("/tmp/probe-blk"),
      "fifo", stat.S_ISFIFO(os.stat("/tmp/probe-fifo").st_mode))
"""


def probe(as_user, host_image, tmp, *options, **kwargs):
    (tmp / "probe-file").write_text("")
    as_user.own(tmp)
    for name in ("probe-chr", "probe-blk", "probe-fifo"):
        (tmp / name).unlink(missing_ok=True)
    return as_user.run(*options, *HOST_BINDS, "-b", f"{tmp}:/tmp", host_image, "--",
                       "python3", "-c", PROBE, **kwargs)


@pytest.fixture
def scratch():
    import shutil

    path = world_readable_dir("chjoin-seccomp-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def results(out):
    return dict(line.split(" ", 1) for line in out.splitlines())


def test_seccomp_fakes_chown_setgroups_setuid_and_device_nodes(as_user, host_image, scratch):
    done = probe(as_user, host_image, scratch, "--seccomp")
    assert done.returncode == 0, done.stderr
    seen = results(done.stdout)
    for call in ("chown", "setgroups", "setuid", "setresgid", "mknod-chr", "mknod-blk",
                 "mknod-fifo"):
        assert seen[call] == "ok", (call, done.stdout)
    # without effect: nobody's uid changed, the file's owner didn't, no device node exists
    assert seen["uid"] == f"{as_user.uid} owner {as_user.uid}"
    assert seen["chr"] == "False blk False fifo True"          # the FIFO is real


def test_without_seccomp_the_same_calls_fail(as_user, host_image, scratch):
    done = probe(as_user, host_image, scratch)
    assert done.returncode == 0, done.stderr
    seen = results(done.stdout)
    assert seen["chown"] == "Invalid argument"          # 1234 is not mapped
    assert seen["setgroups"] == "Operation not permitted"
    assert seen["setuid"] == "Invalid argument"
    assert seen["mknod-chr"] == "Operation not permitted"
    assert seen["mknod-fifo"] == "ok"


def test_seccomp_is_in_every_rank_of_a_group_peers_included(as_user, host_image, scratch):
    (scratch / "probe-file").write_text("")
    as_user.own(scratch)
    script = ("import os\ntry:\n    os.setgroups([])\n    print('faked')\n"
              "except OSError as e:\n    print(e.strerror)\n")
    group = as_user.group(["-v", "--seccomp", "--join-ct=8", "--join-tag=seccomp",
                           *HOST_BINDS, "-b", f"{scratch}:/tmp", host_image, "--", "python3",
                           "-c", script], [{}] * 8)
    assert group.returncodes == [0] * 8, [r.stderr for r in group.ranks]
    assert [r.stdout for r in group.ranks] == ["faked\n"] * 8
    assert sum("join: I lost" in r.stderr for r in group.ranks) == 7
    assert group.lingering == []


def test_seccomp_debug_line_counts_the_program(as_user, image):
    done = as_user.run("-vv", "--seccomp", image, "--", "true")
    assert done.returncode == 0, done.stderr
    assert "seccomp: filter program has 155 instructions" in done.stderr
    assert "seccomp: yes" in as_user.run("-v", "--seccomp", image, "--", "true").stderr


def test_feature_seccomp_is_supported(as_user):
    assert as_user.run("--feature=seccomp").returncode == 0


# apt-get in a -W container of a Debian image of this host (tests/conftest.py's debian_image):
# dpkg sets each file's owner from the package, and an owner the container can't map (uid 5)
# fails without --seccomp.

APT = "apt-get install -y /mnt/test.deb && dpkg -s chjoin-seccomp-test | grep '^Status'"


def test_apt_get_installs_a_local_deb_in_a_w_container_under_seccomp(as_user, debian_image):
    root, debs = debian_image
    done = as_user.run("-W", "--seccomp", "-u", "0", "-g", "0", *HOST_BINDS, "-b",
                       f"{debs}:/mnt", root, "--", "sh", "-c",
                       APT + " && cat /srv/chjoin-test/hello", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Setting up chjoin-seccomp-test (1.0)" in done.stdout
    assert done.stdout.endswith("Status: install ok installed\nhello\n")
    assert not (root / "srv").exists()            # -W: the install vanished with the container


def test_apt_get_fails_on_the_unmappable_owner_without_seccomp(as_user, debian_image):
    root, debs = debian_image
    done = as_user.run("-W", "-u", "0", "-g", "0", *HOST_BINDS, "-b", f"{debs}:/mnt", root,
                       "--", "sh", "-c", APT, timeout=120)
    assert done.returncode != 0
    assert ("error setting ownership of './srv/chjoin-test/games': Invalid argument"
            in done.stdout + done.stderr)
