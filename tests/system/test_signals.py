"""Signal dispositions and signals at awkward moments: the command starts with the signals its
launcher gave chjoin (Python's start-up ignores SIGPIPE and SIGXFSZ: chjoin must not pass that
on), an ignored signal (nohup) stays ignored under --join, Ctrl-C during start-up ends chjoin
as it ends ch-run (no traceback), and a waiting rank hit by several different leave-signals at
once prints one error line. Each test runs as root and as the test user."""

import os
import random
import re
import signal
import subprocess
import time

import pytest

SIGIGN = ["grep", "^SigIgn:", "/proc/self/status"]     # busybox sh -c ignores SIGQUIT


def host_sigign(as_user, wrap=()):
    """SigIgn of a host command started as chjoin is (same identity, same `wrap`)."""
    done = subprocess.run([*wrap, "grep", "^SigIgn:", "/proc/self/status"], capture_output=True,
                          text=True, env=as_user.env(), **as_user.identity_kwargs())
    return done.stdout


def test_the_command_gets_the_launchers_dispositions_not_pythons(as_user, image):
    result = as_user.run(image, "--", *SIGIGN)
    assert result.returncode == 0, result.stderr
    assert result.stdout == host_sigign(as_user)        # SIGPIPE, SIGXFSZ not ignored


def test_a_command_writing_to_a_closed_pipe_dies_of_sigpipe(as_user, image):
    proc = subprocess.Popen([as_user.chjoin, image, "--", "yes"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=as_user.env(), cwd="/",
                            **as_user.identity_kwargs())
    assert proc.stdout.readline() == b"y\n"
    proc.stdout.close()
    assert proc.wait(timeout=30) == -signal.SIGPIPE, proc.stderr.read()
    assert proc.stderr.read() == b""


NOHUP = ["sh", "-c", 'trap "" HUP; exec "$@"', "nohup"]


def test_an_ignored_signal_stays_ignored_for_joined_ranks(as_user, image):
    """`nohup srun ...`: SIGHUP ignored. chjoin's --join catches SIGHUP only where it was not
    ignored, so each rank's command still ignores it."""
    argv = [*NOHUP, as_user.chjoin, "--join-ct=2", "--join-tag=nohup", str(image), "--", *SIGIGN]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=as_user.env(), cwd="/", **as_user.identity_kwargs())
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    expected = host_sigign(as_user, NOHUP)
    assert int(expected.split()[1], 16) & 1 << (signal.SIGHUP - 1)
    assert [out for out, _ in outs] == [expected] * 2


@pytest.mark.parametrize("seed", [1, 2])
def test_ctrl_c_during_start_up_ends_chjoin_without_a_traceback(as_user, image, seed):
    """SIGINT at random moments of a launch, from its first -v line on (the options parsed;
    then the container built, the command exec'd): the launch ends as if killed by SIGINT (as
    ch-run does), never with a Python traceback. (Earlier, while the interpreter itself starts,
    Python's own start-up code is what a SIGINT interrupts.)"""
    rng = random.Random(seed)
    for _ in range(12):
        proc = subprocess.Popen([as_user.chjoin, "-v", image, "--", "sleep", "5"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=as_user.env(), cwd="/", **as_user.identity_kwargs())
        first = proc.stderr.readline()
        assert "verbosity: 1" in first, first
        time.sleep(rng.uniform(0, 0.08))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert proc.returncode == -signal.SIGINT, err


def test_different_leave_signals_at_once_give_one_error_line(as_user, image):
    """A waiting peer gets SIGTERM, SIGINT and SIGHUP, interleaved, 20 in 40 ms (a launcher
    and a terminal both signalling): it leaves with the exit code of the one delivered first
    (128+N) and one line naming it."""
    names = {15: "SIGTERM", 2: "SIGINT", 1: "SIGHUP"}
    burst = [{"at": 1.0 + i * 0.002, "signal": (15, 2, 1)[i % 3], "rank": 1} for i in range(20)]
    group = as_user.group(["--join-ct=2", "--join-tag=mixed", image, "--", "true"],
                          [{"env": {"CHJOIN_TEST_STOP": "winner:setup"}, "first": True},
                           {"at": 0.3}], timeout=20, kill_delay=2, signals=burst)
    peer = group.ranks[1]
    assert peer.returncode - 128 in names, peer.stderr   # pending ones come lowest first
    assert re.fullmatch(rf"chjoin\[\d+\]: error: join: group mixed: "
                        rf"{names[peer.returncode - 128]} received before the container was "
                        r"ready\n", peer.stderr), peer.stderr
    assert group.lingering == []
    # the winner was SIGKILLed in SETUP: the next group of the tag sweeps its record and runs
    after = as_user.group(["--join-ct=2", "--join-tag=mixed", image, "--", "true"], [{}, {}])
    assert after.returncodes == [0, 0], [r.stderr for r in after.ranks]
    assert not [n for n in os.listdir("/dev/shm") if f"chjoin-{as_user.uid}-" in n]
