"""SquashFS images: a file with the SquashFS magic runs as ch-run runs it, served by one
`squashfuse_ll` per container that lives outside the container's namespaces and ends exactly
when the container's last process exits. With --join the winner mounts, the peers never do, and
no rank ever sees SIGBUS, whatever exits or is killed first (ch-run's defect 9). Every test runs
as root and as the unprivileged test user."""

import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from conftest import BIG, world_readable_dir

ERROR_LINE = re.compile(r"^chjoin\[\d+\]: error: (.+)\n$")
# Each rank prints the device of its / (one per FUSE mount) and the type of the mount there.
ROOT_MOUNT = ["--", "sh", "-c", "stat -c %d /; awk '$5 == \"/\" { for (i = 7; i <= NF; i++) "
              "if ($i == \"-\") print $(i + 1) }' /proc/self/mountinfo; sleep 1"]
# Read the image's big file again and again for `seconds`: each `cat` is an exec, an open and
# reads from the image, so a dead daemon shows at once (SIGBUS, or ENOTCONN).
def reading(seconds):
    return ["--", "sh", "-c", f"end=$(($(date +%s) + {seconds})); n=0; "
            "while [ $(date +%s) -lt $end ]; do cat /data/big > /dev/null || exit 9; "
            "n=$((n + 1)); done; echo read $n"]


@pytest.fixture
def sqfs(squash_dir):
    return squash_dir / "img.sqfs"


@pytest.fixture
def mount_dir(as_user):
    """A -m directory of the identity's own (ch-run's default is shared by every launch)."""
    base = world_readable_dir("chjoin-mnt-")
    as_user.own(base)
    yield base / "m"
    shutil.rmtree(base, ignore_errors=True)


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- what is left: daemons, mounts, /dev/shm ---------------------------------------------------

def daemons(image):
    """Live squashfuse_ll processes that serve `image` (they hold it open)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            if comm != "squashfuse_ll" or fields[0] in ("Z", "X"):
                continue
            fds = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") == str(image) for fd in fds):
                found.append(int(entry))
        except OSError:
            continue
    return found


def host_fuse_mounts():
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if " fuse.squashfuse_ll " in line]


TAGS = ("sq2", "sq8", "sq32", "sqterm", "sqread", "sqkill", "sqterm2", "sqbad")
_names = {}


def shm_objects(runner):
    """This file's groups' names (other tests and a soak may share the machine), as the
    runner's ranks compute them (`Runner.shm_names`: keyed, no tag in them)."""
    if runner.uid not in _names:
        _names[runner.uid] = {n for tag in TAGS for n in runner.shm_names(tag)}
    return sorted(n for n in os.listdir("/dev/shm")
                  if n in _names[runner.uid] or n[4:] in _names[runner.uid])


def assert_nothing_left(runner, image, group=None):
    """No daemon (it ends within moments of the container's last process), no mount on the
    host, nothing in /dev/shm, nothing that outlived the ranks."""
    deadline = time.monotonic() + 2
    while daemons(image) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert daemons(image) == [], "the daemon outlived its container"
    assert host_fuse_mounts() == []
    assert shm_objects(runner) == []
    if group is not None:
        assert group.lingering == [], "a process outlived the ranks"


def run_group_counting_daemons(runner, image, args, ranks, **kwargs):
    """Runner.group, while another thread counts the image's daemons: (group, most seen)."""
    result, most = {}, [0]

    def launch():
        result["group"] = runner.group(args, ranks, **kwargs)
    thread = threading.Thread(target=launch)
    thread.start()
    while thread.is_alive():
        most[0] = max(most[0], len(daemons(image)))
        time.sleep(0.02)
    thread.join()
    return result["group"], most[0]


# --- one container -------------------------------------------------------------------------------

def test_a_squashfs_image_runs_with_its_files_and_ids(as_user, sqfs):
    out = ok(as_user.run(sqfs, "--", "sh", "-c", "cat /etc/image-file; id -u; id -g; "
                         "wc -c < /data/big"))
    assert out.split("\n")[:4] == ["from the image", str(as_user.uid), str(as_user.gid), str(BIG)]


def test_its_root_is_the_fuse_mount_and_read_only(as_user, sqfs):
    out = ok(as_user.run(sqfs, *ROOT_MOUNT))
    assert out.split()[1] == "fuse.squashfuse_ll"
    result = as_user.run(sqfs, "--", "touch", "/newfile")
    assert result.returncode != 0 and "Read-only file system" in result.stderr
    assert_nothing_left(as_user, sqfs)


def test_a_symlink_to_the_image_runs_it(as_user, squash_dir):
    assert ok(as_user.run(squash_dir / "link.sqfs", "--", "cat", "/etc/image-file")) == \
        "from the image\n"


def test_write_fake_writes_vanish(as_user, sqfs):
    out = ok(as_user.run("-W", sqfs, "--", "sh", "-c", "echo gone > /newfile; cat /newfile; "
                         "cat /etc/image-file"))
    assert out == "gone\nfrom the image\n"
    assert ok(as_user.run(sqfs, "--", "sh", "-c", "ls /newfile 2>&1 || true")) != "/newfile\n"


def test_binds_passwd_home_and_private_tmp_work_on_top(as_user, sqfs, host_dir):
    out = ok(as_user.run("-b", f"{host_dir}:/mnt", "-t", sqfs, "--", "sh", "-c",
                         "cat /mnt/file; ls -A /tmp; grep -c . /etc/passwd"))
    assert out.split("\n")[0] == "from the host"
    assert ok(as_user.run("--no-passwd", sqfs, "--", "cat", "/etc/passwd")) == ""
    out = ok(as_user.run("--home", sqfs, "--", "sh", "-c", "echo $HOME; touch /w"))
    assert out == f"/home/{as_user.name}\n"


def test_mount_option_names_the_mount_point_and_makes_it(as_user, sqfs, mount_dir):
    result = as_user.run("-v", "-m", mount_dir, sqfs, "--", "true")
    ok(result)
    assert f"squashfs: {sqfs} mounted at {mount_dir} by squashfuse_ll" in result.stderr
    assert mount_dir.is_dir() and os.listdir(mount_dir) == []    # the host never sees it


def test_mount_option_is_ignored_with_a_warning_for_a_directory(as_user, image, mount_dir):
    result = as_user.run("-m", mount_dir, image, "--", "true")
    assert re.fullmatch(r"chjoin\[\d+\]: warning: --mount invalid with directory image, "
                        r"ignoring\n", result.stderr), result.stderr
    assert result.returncode == 0 and not mount_dir.exists()


def test_default_mount_point_is_made(as_user, sqfs):
    ok(as_user.run(sqfs, "--", "true"))
    assert os.path.isdir(f"/var/tmp/{as_user.name}.ch/mnt")


def test_feature_squash_is_supported(as_user):
    assert as_user.run("--feature=squash").returncode == 0


def test_feature_squash_needs_squashfuse_ll_on_path(as_user):
    assert as_user.run("--feature=squash", env={"PATH": "/nonexistent"}).returncode == 1


# --- bad input: exit 84, one line naming the cause, nothing left ----------------------------------

BAD = [
    # (file or None for the good image, extra options, environment, message pattern)
    ("garbage", [], {}, r"can't mount SquashFS image \S+/garbage.sqfs: SquashFS version "
                        r"\d+\.\d+; only 4.0 is supported"),
    ("truncated", [], {}, r"truncated: \d+ bytes, its superblock says \d+"),
    ("corrupt", [], {}, r"at \S+: squashfuse_ll failed: Something went wrong trying to read "
                        r"the squashfs image\."),
    ("no-root", [], {}, r"can't read its root directory: .+ \(a corrupt image\?\)"),
    (None, [], {"PATH": "/nonexistent"}, r"squashfuse_ll not found on \$PATH"),
    (None, ["-m", "/proc/nope/mnt"], {}, r"^can't make SquashFS mount point /proc/nope/mnt: "),
    (None, ["-m", "/etc/passwd"], {}, r"^can't make SquashFS mount point /etc/passwd: Not a "
                                      r"directory$"),
    (None, ["-w"], {}, r"^--write invalid with SquashFS image"),
]


@pytest.mark.parametrize("bad, options, env, message", BAD,
                         ids=[f"{b or 'good'} {' '.join(o)} {' '.join(e)}" for b, o, e, _ in BAD])
def test_bad_squashfs_input_is_one_error_line_and_exit_84(as_user, squash_dir, bad, options, env,
                                                          message):
    image = squash_dir / f"{bad or 'img'}.sqfs"
    result = as_user.run(*options, image, "--", "true", env=env)
    assert result.returncode == 84, result.stderr
    match = ERROR_LINE.match(result.stderr)
    assert match, f"not one error line: {result.stderr!r}"
    assert re.search(message, match.group(1)), match.group(1)
    assert_nothing_left(as_user, image)


def run_with_dev(as_user, dev_setup, *args):
    """chjoin ARGS as the identity, in a mount namespace of its own whose /dev is changed by
    the shell commands `dev_setup` (run as root first)."""
    drop = [] if as_user.uid == 0 else ["setpriv", f"--reuid={as_user.uid}",
                                        f"--regid={as_user.gid}", "--clear-groups"]
    script = f'{dev_setup} && exec "$@"'
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                           "sh", *drop, as_user.chjoin, *map(str, args)], capture_output=True,
                          text=True, env=as_user.env(), timeout=60, cwd="/")


DEV_WITHOUT_FUSE = ("mount -t tmpfs -o mode=755 none /dev && mknod -m 666 /dev/null c 1 3 && "
                    "mknod -m 666 /dev/zero c 1 5 && mknod -m 666 /dev/urandom c 1 9")


def test_no_dev_fuse_is_exit_84_naming_it(as_user, sqfs):
    result = run_with_dev(as_user, DEV_WITHOUT_FUSE, sqfs, "--", "true")
    assert result.returncode == 84, result.stderr
    assert re.fullmatch(r"can't mount SquashFS image \S+: /dev/fuse does not exist \(the kernel "
                        r"has no FUSE\)", ERROR_LINE.match(result.stderr).group(1))
    assert run_with_dev(as_user, DEV_WITHOUT_FUSE, "--feature=squash").returncode == 1
    assert_nothing_left(as_user, sqfs)


def test_dev_fuse_the_user_cannot_open_asks_an_admin_for_0666(as_user, sqfs, host_dir):
    if as_user.uid == 0:
        pytest.skip("root opens /dev/fuse whatever its mode")
    private = host_dir / "fuse"
    private.write_text("")
    os.chmod(private, 0o600)
    setup = f"mount --bind {private} /dev/fuse"
    result = run_with_dev(as_user, setup, sqfs, "--", "true")
    assert result.returncode == 84, result.stderr
    assert re.search(r"/dev/fuse is mode 600: not usable by this user; an admin must make it "
                     r"0666", ERROR_LINE.match(result.stderr).group(1))
    assert run_with_dev(as_user, setup, "--feature=squash").returncode == 1
    assert_nothing_left(as_user, sqfs)


def test_a_failing_bind_on_a_squashfs_image_leaves_no_daemon(as_user, sqfs):
    """The daemon is already serving when the build fails: it ends with the launch."""
    result = as_user.run("-b", "/no/such/dir:/mnt", sqfs, "--", "true")
    assert result.returncode == 31
    assert "source not found: /no/such/dir" in ERROR_LINE.match(result.stderr).group(1)
    assert_nothing_left(as_user, sqfs)


# --- --join: one mount per container, made by the winner ------------------------------------------

@pytest.mark.parametrize("n", [2, 8, 32])
def test_a_group_shares_one_mount_and_one_daemon(as_user, sqfs, n):
    group, most = run_group_counting_daemons(
        as_user, sqfs, [f"--join-ct={n}", f"--join-tag=sq{n}", sqfs, *ROOT_MOUNT], [{}] * n,
        timeout=120)
    assert group.returncodes == [0] * n, [r.stderr for r in group.ranks if r.returncode][:3]
    assert {r.stdout.split()[1] for r in group.ranks} == {"fuse.squashfuse_ll"}
    assert len({r.stdout.split()[0] for r in group.ranks}) == 1, "more than one mount"
    assert most == 1, f"{most} squashfuse_ll daemons for one container"
    assert_nothing_left(as_user, sqfs, group)


def test_the_join_term_is_the_image_files_real_path_not_the_mount_point(as_user, squash_dir,
                                                                      mount_dir):
    """A symlink to the image and another -m: the same container."""
    group = as_user.group(["--join-ct=2", "--join-tag=sqterm"],
                          [{"args": [str(squash_dir / "img.sqfs"), *ROOT_MOUNT]},
                           {"args": ["-m", str(mount_dir), str(squash_dir / "link.sqfs"),
                                     *ROOT_MOUNT]}])
    assert group.returncodes == [0, 0], [r.stderr for r in group.ranks]
    assert group.ranks[0].stdout == group.ranks[1].stdout
    assert "warning" not in "".join(r.stderr for r in group.ranks)
    assert_nothing_left(as_user, squash_dir / "img.sqfs", group)


def test_peers_keep_reading_after_the_winners_command_exited(as_user, sqfs):
    """ch-run defect 9: its FUSE server is the winner's, so its peers die of SIGBUS once the
    winner's command exits. Here the winner runs `true`, its holder goes once all are in, and
    seven peers read the image for three seconds more."""
    group, most = run_group_counting_daemons(
        as_user, sqfs, ["--join-ct=8", "--join-tag=sqread"],
        [{"args": [str(sqfs), "--", "true"]}] +
        [{"args": [str(sqfs), *reading(3)], "at": 0.3}] * 7, timeout=60)
    assert group.returncodes == [0] * 8, [r.stderr for r in group.ranks]
    assert all(r.stdout.startswith("read ") for r in group.ranks[1:])
    assert group.ranks[0].elapsed < 1
    assert most == 1
    assert_nothing_left(as_user, sqfs, group)


KILLS = {
    # victim: (ranks, signals); every rank reads for 3 s, the victim is SIGKILLed at 1 s
    "holder": ([{}] * 7 + [{"at": 2.0}], [{"at": 1.0, "signal": 9, "rank": "holders"}]),
    "winner": ([{}] + [{"at": 0.3}] * 7, [{"at": 1.0, "signal": 9, "rank": 0, "group": True}]),
    "reading peer": ([{}] + [{"at": 0.3}] * 7, [{"at": 1.0, "signal": 9, "rank": 3,
                                                 "group": True}]),
}


@pytest.mark.parametrize("victim", KILLS)
def test_sigkill_of_one_process_never_stops_the_others_reading(as_user, sqfs, victim):
    ranks, signals = KILLS[victim]
    group, most = run_group_counting_daemons(
        as_user, sqfs, ["--join-ct=8", "--join-tag=sqkill", "--join-timeout=10", sqfs,
                        *reading(3)], ranks, timeout=60, signals=signals)
    codes = group.returncodes
    killed = {"winner": [0], "reading peer": [3]}.get(victim, [])
    assert [c for i, c in enumerate(codes) if i not in killed] == [0] * (8 - len(killed)), \
        [r.stderr for r in group.ranks]
    assert all(codes[i] == -9 for i in killed)
    if victim == "holder":
        assert group.holders_signalled, "no holder to kill"
    assert most == 1
    assert_nothing_left(as_user, sqfs, group)


def test_the_daemon_outlives_sigterm_sigint_and_sighup(as_user, sqfs):
    """Slurm sends SIGTERM to everything of a step, then waits (KillWait) before SIGKILL: the
    daemon ignores it (and Ctrl-C's SIGINT, a hangup's SIGHUP), so ranks finish reading."""
    sent = []

    def signal_the_daemon():
        time.sleep(1.0)
        for pid in daemons(sqfs):
            for signum in (15, 2, 1):
                os.kill(pid, signum)
            sent.append(pid)
    thread = threading.Thread(target=signal_the_daemon)
    thread.start()
    group = as_user.group(["--join-ct=4", "--join-tag=sqterm2", sqfs, *reading(3)], [{}] * 4,
                          timeout=60)
    thread.join()
    assert sent, "no daemon to signal"
    assert group.returncodes == [0] * 4, [r.stderr for r in group.ranks]
    assert_nothing_left(as_user, sqfs, group)


def test_a_winners_squashfs_failure_reaches_every_peer_with_exit_84(as_user, squash_dir):
    """The daemon fails at INIT on the winner: its waiting peers fail at once, with the cause
    and the winner's exit code."""
    bad = squash_dir / "corrupt.sqfs"
    group = as_user.group(["--join-ct=4", "--join-tag=sqbad", "--join-timeout=60", bad, "--",
                           "true"], [{}] + [{"at": 0.2}] * 3, timeout=20)
    assert group.returncodes == [84] * 4, [r.stderr for r in group.ranks]
    for r in group.ranks:
        line = ERROR_LINE.match(r.stderr)
        assert line, r.stderr
        assert "squashfuse_ll failed: Something went wrong" in line.group(1)
        assert r.elapsed < 10
    assert_nothing_left(as_user, bad, group)
