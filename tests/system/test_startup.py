"""Start-up is a feature: every rank on every node runs chjoin, so the launch path imports no
module that costs milliseconds (`python -X importtime` shows what each rank loaded)."""

import re

import pytest

# Each of these cost a rank 2 to 25 ms of CPU when chjoin imported them (click, dataclasses via
# inspect, re, enum via signal, hashlib via OpenSSL, json via re, warnings via os.execvpe).
HEAVY = {"click", "dataclasses", "inspect", "re", "enum", "hashlib", "json", "typing",
         "warnings", "signal", "subprocess", "pathlib"}
HEAVY |= {"chjoin.admin", "chjoin.slurm"}   # the admin tool (chjoinctl) is never on a rank's path


def imported(stderr):
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", stderr, re.M))


def test_a_single_launch_imports_nothing_heavy(as_user, image):
    result = as_user.run(image, "--", "true", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    modules = imported(result.stderr)
    assert "chjoin.cli" in modules
    assert modules & HEAVY == set()


@pytest.mark.parametrize("timings", [[], ["--timings"]])
def test_winner_and_peers_import_nothing_heavy(as_user, image, timings):
    group = as_user.group([*timings, "--join-ct=3", "--join-tag=light", image, "--", "true"],
                          [{}] * 3, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert group.returncodes == [0] * 3, [r.stderr for r in group.ranks]
    for rank in group.ranks:
        modules = imported(rank.stderr)
        assert "chjoin.ipc" in modules
        assert modules & HEAVY == set()


def test_squashfs_launches_import_nothing_heavy(as_user, squash_dir):
    """The SquashFS builder forks and execs the daemon itself (no `subprocess`) and speaks to
    it through `_socket` (no `socket`)."""
    image = squash_dir / "img.sqfs"
    result = as_user.run(image, "--", "true", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    assert imported(result.stderr) & (HEAVY | {"socket"}) == set()
    group = as_user.group(["--join-ct=3", "--join-tag=sqlight", image, "--", "true"],
                          [{}] * 3, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert group.returncodes == [0] * 3, [r.stderr for r in group.ranks]
    for rank in group.ranks:
        assert imported(rank.stderr) & (HEAVY | {"socket"}) == set()


def test_creating_and_attaching_to_a_named_container_imports_nothing_heavy(as_user, image):
    name = f"light-{as_user.who}"
    try:
        for args in ([f"--name={name}", image], [f"--name={name}"]):
            result = as_user.run(*args, "--", "true", env={"PYTHONPROFILEIMPORTTIME": "1"})
            assert result.returncode == 0, result.stderr
            modules = imported(result.stderr)
            assert "chjoin.named" in modules
            assert modules & HEAVY == set()
    finally:
        from test_named import ctl
        ctl(as_user, "stop", name)


def test_seccomp_ranks_import_only_the_filter(as_user, image):
    """--seccomp costs a rank the filter module (its program precomputed) and nothing heavy."""
    group = as_user.group(["--seccomp", "--join-ct=3", "--join-tag=seclight", image, "--",
                           "true"], [{}] * 3, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert group.returncodes == [0] * 3, [r.stderr for r in group.ranks]
    for rank in group.ranks:
        modules = imported(rank.stderr)
        assert "chjoin.seccomp" in modules
        assert modules & HEAVY == set()
