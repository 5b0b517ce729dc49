"""What chjoin does as ch-run 0.45 does, where it once did not (issue 12): binds of one source
at several places, PWD, a lone `$` in --set-env, the -q levels, the host's root as image, the
warnings, --unsafe, and ch-run's -v and -vv lines. Each test runs as root and as the test user.
"""

import os
from pathlib import Path

import pytest


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def environment(out):
    return dict(line.split("=", 1) for line in out.splitlines())


# 1. A source bound at several destinations is mounted at each.

def test_a_source_bound_twice_is_mounted_at_both_destinations(as_user, image, host_dir):
    out = ok(as_user.run("-b", f"{host_dir}:/mnt", "-b", f"{host_dir}:/opt", image, "--",
                         "cat", "/mnt/file", "/opt/file"))
    assert out == "from the host\n" * 2


def test_a_bind_of_a_default_source_keeps_the_default(as_user, image):
    out = ok(as_user.run("-b", "/dev:/mnt", image, "--", "sh", "-c",
                         "ls /dev/null /mnt/null"))
    assert out == "/dev/null\n/mnt/null\n"


# 5. The host's root as image.

HOST_WARNING = "image is the host's root (/)"


def test_host_root_as_image_runs_on_the_hosts_tree_in_new_namespaces(as_user):
    result = as_user.run("/", "--", "sh", "-c",
                         "readlink /proc/self/ns/mnt; cat /proc/self/uid_map; "
                         "cat /etc/passwd; id -u")
    assert result.returncode == 0, result.stderr
    assert HOST_WARNING in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] != os.readlink("/proc/self/ns/mnt")
    assert lines[1].split() == [str(as_user.uid), "0", "1"]
    with open("/etc/passwd") as f:       # the host's own, not a generated one
        assert lines[2:-1] == f.read().splitlines()
    assert lines[-1] == str(as_user.uid)


def test_host_root_as_image_is_read_only_unless_write(as_user, host_dir):
    if os.stat(host_dir).st_dev != os.stat("/").st_dev:
        pytest.skip(f"{host_dir} is not on the root filesystem")
    as_user.own(host_dir)
    result = as_user.run("/", "--", "touch", f"{host_dir}/new")
    assert result.returncode != 0 and "Read-only file system" in result.stderr
    ok(as_user.run("-w", "/", "--", "touch", f"{host_dir}/new"))
    assert (host_dir / "new").exists()


def test_host_root_as_image_takes_binds_and_private_tmp(as_user, host_dir):
    out = ok(as_user.run("-t", "-b", f"{host_dir}:/mnt", "/", "--", "sh", "-c",
                         "cat /mnt/file; ls -A /tmp | wc -l"))
    assert out.split() == ["from", "the", "host", "0"]


def test_host_root_as_image_gets_no_default_binds(as_user, host_dir):
    # /tmp is the host's own /tmp (which holds host_dir), not $TMPDIR bound over it
    assert host_dir.parent == Path("/tmp")
    out = ok(as_user.run("/", "--", "ls", f"/tmp/{host_dir.name}", env={"TMPDIR": str(host_dir)}))
    assert out == "file\n"
