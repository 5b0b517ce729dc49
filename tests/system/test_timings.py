"""--timings and $CHJOIN_TIMINGS: each rank says how long each phase took and which role it had,
in one line on stderr or as one JSON object per rank (and one for the holder) in a file."""

import json
import os
import re

import pytest

from conftest import world_readable_dir

LINE = re.compile(r"^chjoin\[(\d+)\]: timings: (single|winner|peer)  ((?:[a-z]+ [\d.]+  )+)"
                  r"total ([\d.]+) ms \(start-up before that: ([\d.]+) ms cpu\)(; failed)?$")


def phases(line):
    """{phase: ms} of one stderr timings line."""
    match = LINE.match(line)
    assert match, f"not a timings line: {line!r}"
    words = match.group(3).split()
    return dict(zip(words[::2], map(float, words[1::2])))


@pytest.fixture
def timings_file(as_user):
    base = world_readable_dir("chjoin-timings-")
    as_user.own(base)
    yield base / "timings.json"
    for name in os.listdir(base):
        os.unlink(base / name)
    os.rmdir(base)


@pytest.mark.parametrize("how", [["--timings"], []])
def test_a_single_launch_prints_one_line_of_phases(as_user, image, how):
    env = {} if how else {"CHJOIN_TIMINGS": "1"}
    result = as_user.run(*how, image, "--", "echo", "hello", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    took = phases(lines[0])
    assert list(took) == ["parse", "image", "namespaces", "filesystem", "environment"]
    total = float(LINE.match(lines[0]).group(4))
    assert sum(took.values()) == pytest.approx(total, abs=0.1 * len(took))


def test_no_timings_unless_asked(as_user, image):
    for env in ({}, {"CHJOIN_TIMINGS": "0"}, {"CHJOIN_TIMINGS": ""}):
        result = as_user.run(image, "--", "true", env=env)
        assert (result.returncode, result.stderr) == (0, "")


def test_a_failed_launch_still_reports_then_errs(as_user, image):
    result = as_user.run("--timings", "-c", "/nope", image, "--", "true")
    assert result.returncode == 31
    timing, err = result.stderr.splitlines()
    assert LINE.match(timing).group(6) == "; failed"
    assert err.endswith("error: can't cd to /nope: No such file or directory")


def test_join_roles_on_stderr(as_user, image):
    group = as_user.group(["--timings", "--join-ct=4", "--join-tag=clock", image, "--", "true"],
                          [{}] * 4)
    assert group.returncodes == [0] * 4, [r.stderr for r in group.ranks]
    roles = sorted(LINE.match(r.stderr.strip()).group(2) for r in group.ranks)
    assert roles == ["peer", "peer", "peer", "winner"]
    for rank in group.ranks:
        took = phases(rank.stderr.strip())
        if "filesystem" in took:
            assert {"discovery", "wait", "namespaces", "join"} <= set(took)
        else:
            assert {"discovery", "wait", "join"} <= set(took) and "namespaces" not in took


def test_timings_file_gets_one_json_object_per_rank_and_the_holder(as_user, image,
                                                                   timings_file):
    env = {"CHJOIN_TIMINGS": str(timings_file)}
    group = as_user.group(["--join-ct=5", "--join-tag=json", image, "--", "true"], [{}] * 5,
                          env=env)
    assert group.returncodes == [0] * 5, [r.stderr for r in group.ranks]
    assert all(r.stderr == "" for r in group.ranks)
    assert group.lingering == []
    records = [json.loads(line) for line in timings_file.read_text().splitlines()]
    assert sorted(r["role"] for r in records) == ["holder", "peer", "peer", "peer", "peer",
                                                  "winner"]
    assert {r["pid"] for r in records if r["role"] != "holder"} == {r.pid for r in group.ranks}
    for record in records:
        assert (record["tag"], record["count"], record["failed"]) == ("json", 5, False)
        assert all(v >= 0 for k, v in record.items() if k.endswith("_ms"))
    holder = next(r for r in records if r["role"] == "holder")
    assert holder["hold_ms"] == holder["total_ms"] > 0
    winner = next(r for r in records if r["role"] == "winner")
    assert {"discovery_ms", "wait_ms", "namespaces_ms", "filesystem_ms"} <= set(winner)


def test_an_unwritable_timings_file_is_one_clear_error(as_user, image):
    result = as_user.run(image, "--", "true", env={"CHJOIN_TIMINGS": "/proc/no/such/file"})
    assert result.returncode == 31
    assert re.fullmatch(r"chjoin\[\d+\]: error: --timings: can't open /proc/no/such/file: .+\n",
                        result.stderr)
