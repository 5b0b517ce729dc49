"""chjoin as a drop-in ch-run 0.45.2 (issue 19): the options its --help lists that chjoin once
lacked (--color, --fuse-single, --usage, --test, --warnings, --abort-fatal), --feature answers,
the command from the image's ENTRYPOINT and CMD, ch-run's -v lines, the host's root as image
quiet by default, --env-no-expand for every --set-env, and --join-pid's words. Each test runs
as root and as the test user."""

import json
import os
import re
import shutil
import signal

import pytest

from conftest import build_busybox_image, world_readable_dir


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def lines(stderr):
    """The message lines, without the `chjoin[PID]: ` prefix."""
    return [re.sub(r"^chjoin\[\d+\]: ", "", line) for line in stderr.splitlines()]


@pytest.fixture
def entry_image(as_user):
    """An image whose /ch/metadata.json names an ENTRYPOINT and a CMD."""
    base = world_readable_dir("chjoin-entry-")
    root = build_busybox_image(base / "img")
    (root / "ch" / "metadata.json").write_text(json.dumps(
        {"cwd": "/", "env": {}, "shell": ["/bin/sh", "-c"], "entrypoint": ["echo", "entry"],
         "cmd": ["default", "args"]}))
    os.chmod(root / "ch" / "metadata.json", 0o644)
    yield root
    shutil.rmtree(base, ignore_errors=True)


# ENTRYPOINT and CMD

def test_no_command_runs_entrypoint_and_cmd(as_user, entry_image):
    assert ok(as_user.run(entry_image)) == "entry default args\n"
    assert ok(as_user.run(entry_image, "--")) == "entry default args\n"


def test_a_dash_runs_entrypoint_with_the_arguments_given_instead_of_cmd(as_user, entry_image):
    assert ok(as_user.run(entry_image, "--", "-")) == "entry default args\n"
    assert ok(as_user.run(entry_image, "--", "-", "x", "y")) == "entry x y\n"


def test_a_command_given_replaces_both(as_user, entry_image):
    assert ok(as_user.run(entry_image, "--", "echo", "mine")) == "mine\n"


def test_the_default_command_is_reported_at_v(as_user, entry_image):
    err = as_user.run("-v", entry_image).stderr
    assert "executing: echo entry default args" in lines(err)


def test_no_command_and_no_metadata_is_one_error(as_user, image):
    done = as_user.run(image)
    assert done.returncode == 31
    assert lines(done.stderr) == ["error: no command given and can't read /ch/metadata.json: "
                                  "No such file or directory"]


def test_metadata_without_entrypoint_or_cmd_is_one_error(as_user, entry_image):
    (entry_image / "ch" / "metadata.json").write_text('{"cwd": "/"}')
    done = as_user.run(entry_image)
    assert done.returncode == 31
    assert "error: no command given and the image has no ENTRYPOINT or CMD" in done.stderr


def test_joined_ranks_each_take_the_default_command(as_user, entry_image):
    group = as_user.group(["--join-ct=3", "--join-tag=entry", entry_image], [{}] * 3)
    assert group.returncodes == [0] * 3, [r.stderr for r in group.ranks]
    assert [r.stdout for r in group.ranks] == ["entry default args\n"] * 3


# Options 0.45.2 has

def test_warnings_logs_n_warnings_and_reprints_them(as_user):
    done = as_user.run("--warnings=2")
    assert done.returncode == 0
    assert lines(done.stderr) == ["warning: this is warning 1!", "warning: this is warning 2!",
                                  "warning: reprinting first 2 warning(s)",
                                  "warning: this is warning 1!", "warning: this is warning 2!"]
    assert as_user.run("--warnings=0").stderr == ""


def test_warnings_reprint_only_what_fits_ch_runs_buffer(as_user):
    done = as_user.run("--warnings=100")
    assert done.returncode == 0
    text = done.stderr
    assert text.count("this is warning 1!") == 2 and text.count("this is warning 100!") == 1
    assert re.search(r"reprinting first \d+ warning\(s\)", text)


@pytest.mark.parametrize("quiet, shown", [([], ["info", "warning: warning"]),
                                          (["-q"], ["warning: warning"]), (["-qq"], []),
                                          (["-v"], ["verbose", "info", "warning: warning"])])
def test_test_log_prints_each_level_down_to_the_verbosity(as_user, quiet, shown):
    done = as_user.run(*quiet, "--test=log")
    assert done.returncode == 0
    assert [line for line in lines(done.stderr) if "reprinting" not in line][:len(shown)] == shown
    assert not [line for line in lines(done.stderr)[len(shown):] if "reprinting" not in line
                and line != "warning: warning"]


def test_test_log_fail_fails_even_at_qqq(as_user):
    done = as_user.run("-qqq", "--test=log-fail")
    assert done.returncode == 31
    assert lines(done.stderr) == ['error: the program failed inexplicably ("log-fail" '
                                  'specified)']
    done = as_user.run("--test=nope")
    assert (done.returncode, lines(done.stderr)) == (
        31, ["error: invalid --test argument: nope; see source code"])


def test_color_colours_the_level_and_auto_stays_plain_off_a_terminal(as_user, image):
    done = as_user.run("--color=yes", "/no/image", "--", "true")
    assert "\033[1;31mchjoin[" in done.stderr and done.stderr.rstrip().endswith("\033[0m")
    for plain in (["--color=no"], ["--color"], ["--color=auto"], []):
        assert "\033[" not in as_user.run(*plain, "/no/image", "--", "true").stderr
    for synonym in ("always", "force", "never", "none", "tty", "if-tty"):
        assert as_user.run(f"--color={synonym}", image, "--", "true").returncode == 0
    done = as_user.run("--color=purple", image, "--", "true")
    assert (done.returncode, lines(done.stderr)) == (31, ["error: --color: invalid arg: purple"])


def test_abort_fatal_aborts_on_an_error(as_user):
    done = as_user.run("--abort-fatal", "/no/image", "--", "true")
    assert done.returncode == -signal.SIGABRT
    assert "error: can't stat: /no/image" in done.stderr
    assert "reprinting" not in done.stderr


def test_abort_fatal_applies_from_where_it_stands_to_a_bad_value_after_it(as_user, image):
    done = as_user.run("--abort-fatal", "-u", "abc", image, "--", "true")
    assert done.returncode == -signal.SIGABRT, done.stderr
    assert "error: --uid: no digits found" in done.stderr


def test_a_bad_color_is_refused_where_it_stands(as_user, image):
    done = as_user.run("--color=bogus", "-u", "abc", image, "--", "true")
    assert done.returncode == 31
    assert lines(done.stderr) == ["error: --color: invalid arg: bogus"]


def test_usage_is_argps_short_usage(as_user):
    done = as_user.run("--usage")
    assert done.returncode == 0 and done.stderr == ""
    out = done.stdout
    assert out.startswith("Usage: chjoin [-?jqtvVw] [-b SRC[:DST]]")
    for word in ("[--seccomp]", "[--color[=WHEN]]", "[--fuse-single]", "[--abort-fatal]",
                 "[--test=TEST]", "[--warnings=NUM]", "[--write-fake[=SIZE]]"):
        assert word in out
    assert all(len(line) <= 79 for line in out.splitlines())


def test_help_lists_every_option_of_ch_run_045(as_user):
    out = ok(as_user.run("--help"))
    for option in ("--abort-fatal", "--bind", "--cd", "--color[=WHEN]", "--env-no-expand",
                   "--feature", "--fuse-single", "--gid", "--home", "--join", "--join-ct",
                   "--join-pid", "--join-tag", "--mount", "--no-passwd", "--private-tmp",
                   "--quiet", "--seccomp", "--set-env[=ARG]", "--set-env0[=ARG]", "--storage",
                   "--test", "--uid", "--unsafe", "--unset-env", "--verbose", "--version",
                   "--warnings", "--write", "--write-fake[=SIZE]", "--help", "--usage"):
        assert option in out, option


def test_fuse_single_serves_a_squashfs_image_single_threaded(as_user, squash_dir):
    done = as_user.run("--fuse-single", squash_dir / "img.sqfs", "--", "sh", "-c",
                       "cat /etc/image-file; ps -o args | grep '[s]quashfuse_ll'")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "from the image"
    assert as_user.run("--fuse-single", squash_dir / "img.sqfs", "--", "true").returncode == 0


def test_fuse_single_passes_s_to_the_daemon(as_user, squash_dir):
    """The daemon lives outside the container: look for it on the host while a rank runs."""
    import subprocess
    import time

    process = subprocess.Popen([as_user.chjoin, "--fuse-single", str(squash_dir / "img.sqfs"),
                                "--", "sleep", "2"], env=as_user.env(), cwd="/",
                               **as_user.identity_kwargs())
    try:
        seen = []
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        argv = f.read().split(b"\0")
                except OSError:
                    continue
                if argv[0].endswith(b"squashfuse_ll") and os.stat(f"/proc/{pid}").st_uid == \
                        as_user.uid:
                    seen.append(argv)
            time.sleep(0.05)
    finally:
        process.wait(timeout=10)
    assert seen and b"-s" in seen[0], seen


@pytest.mark.parametrize("feature, code", [("seccomp", 0), ("extglob", 0)])
def test_feature_answers(as_user, feature, code):
    assert as_user.run(f"--feature={feature}").returncode == code


def test_feature_tmpfs_xattrs_probes_the_kernel(as_user):
    """Linux >= 6.6 takes user.* xattrs on a tmpfs mounted in a user namespace; the answer is
    the probe's, not a constant."""
    major, minor = map(int, os.uname().release.split(".")[:2])
    expected = 0 if (major, minor) >= (6, 6) else 1
    assert as_user.run("--feature=tmpfs-xattrs").returncode == expected


# Messages

def test_verbose_prints_ch_runs_lines_for_a_run_without_join(as_user, image):
    err = lines(as_user.run("-v", image, "--", "true").stderr)
    storage = f"/var/tmp/{as_user.name}.ch"
    expected = ["verbosity: 1", f"image: {image}", f"storage: {storage}", f"newroot: {image}",
                f"container uid: {as_user.uid}", f"container gid: {as_user.gid}",
                "join: 0 0 (null) 0", "host $TMPDIR: /tmp", "private /tmp: 0", "seccomp: no",
                "unsafe: no"]
    assert err[:len(expected)] == expected
    assert "executing: true" in err


def test_verbose_names_the_host_root_as_newroot(as_user):
    err = lines(as_user.run("-v", "/", "--", "true").stderr)
    assert "newroot: /" in err and "image: /" in err


def test_verbose_join_line_names_count_and_tag(as_user, image):
    err = lines(as_user.run("-v", "--join-ct=1", "--join-tag=one", image, "--", "true").stderr)
    assert "join: 1 1 one 0" in err


def test_the_hosts_root_says_nothing_by_default(as_user):
    done = as_user.run("/", "--", "touch", "/no-such-file-here")
    assert done.returncode == 1
    assert done.stderr == "touch: cannot touch '/no-such-file-here': Read-only file system\n"
    assert "this is not a container" in as_user.run("-v", "/", "--", "true").stderr


def test_env_no_expand_applies_to_every_set_env_wherever_it_stands(as_user, image):
    out = ok(as_user.run("--set-env=foo=$test:app", "--env-no-expand", image, "--", "sh", "-c",
                         "echo $foo", env={"test": "x"}))
    assert out == "$test:app\n"
    out = ok(as_user.run("--set-env=foo=$test:app", image, "--", "sh", "-c", "echo $foo",
                         env={"test": "x"}))
    assert out == "x:app\n"


def test_join_pid_of_another_users_process_says_permission_denied(as_user, image):
    if as_user.who == "root":
        pytest.skip("root may enter pid 1's namespaces")
    done = as_user.run("--join-pid=1", image, "--", "true")
    assert done.returncode == 31
    assert lines(done.stderr) == ["error: join: can't open /proc/1/ns/user: Permission denied"]


def test_verbose_names_a_squashfs_images_mount_point_as_ch_run_does(as_user, squash_dir):
    image = squash_dir / "img.sqfs"
    err = lines(as_user.run("-v", image, "--", "true").stderr)
    assert "newroot: (null)" in err
    assert f"using default mount point: /var/tmp/{as_user.name}.ch/mnt" in err
    mount = world_readable_dir("chjoin-mnt-")
    try:
        as_user.own(mount)
        err = lines(as_user.run("-v", "-m", mount, image, "--", "true").stderr)
    finally:
        shutil.rmtree(mount, ignore_errors=True)
    assert f"newroot: {os.path.realpath(mount)}" in err
    assert not [line for line in err if line.startswith("using default mount point")]
