"""bench/pidfd_probe.py once, functionally: pidfd_getfd(2) between two ranks (how UCX's CUDA-VMM
path and Level Zero pass GPU memory handles) works on the host and in one joined container, and
fails between separate containers, as CMA does. The benchmark (bench/run) measures its cost."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import world_readable_dir

PROBE = Path(__file__).parents[2] / "bench" / "pidfd_probe.py"
PYTHON = "/usr/bin/python3"


@pytest.fixture
def probe(as_user):
    """The probe in a world-readable directory, and a meeting directory for the two ranks."""
    base = world_readable_dir("chjoin-pidfd-")
    shutil.copy(PROBE, base / "pidfd_probe.py")
    os.chmod(base / "pidfd_probe.py", 0o644)
    meet = base / "meet"
    meet.mkdir()
    as_user.own(meet)
    yield base, meet
    shutil.rmtree(base, ignore_errors=True)


def outcome(stdout):
    [line] = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(line)


def container(as_user, host_image, base):
    return [as_user.chjoin, "-b", "/usr", "-b", str(base), str(host_image), "--", PYTHON,
            str(base / "pidfd_probe.py")]


def test_on_the_host(as_user, probe):
    base, meet = probe
    argv = [PYTHON, str(base / "pidfd_probe.py")]
    kwargs = dict(capture_output=True, text=True, timeout=60, **as_user.identity_kwargs())
    server = subprocess.Popen([*argv, "serve", str(meet)], **as_user.identity_kwargs())
    done = subprocess.run([*argv, "fetch", str(meet), "10"], **kwargs)
    server.wait(timeout=30)
    assert outcome(done.stdout)["pidfd_getfd"] == "ok", done.stderr


def test_joined_ranks(as_user, host_image, probe):
    base, meet = probe
    argv = container(as_user, host_image, base)
    group = as_user.group(["--join-ct=2", "--join-tag=pidfd"],
                          [{"args": argv[1:] + ["serve", str(meet)]},
                           {"args": argv[1:] + ["fetch", str(meet), "10"]}])
    assert group.returncodes == [0, 0], [r.stderr for r in group.ranks]
    assert outcome(group.ranks[1].stdout)["pidfd_getfd"] == "ok"


def test_separate_containers_are_refused(as_user, host_image, probe):
    base, meet = probe
    argv = container(as_user, host_image, base)
    env = as_user.env()
    kwargs = dict(env=env, cwd="/", **as_user.identity_kwargs())
    server = subprocess.Popen([*argv, "serve", str(meet)], **kwargs)
    try:
        done = subprocess.run([*argv, "fetch", str(meet), "10"], capture_output=True, text=True,
                              timeout=60, **kwargs)
    finally:
        server.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    assert outcome(done.stdout)["pidfd_getfd"] == "EPERM"
