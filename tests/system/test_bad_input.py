"""Bad input: one line `chjoin[PID]: error: ...`, ch-run's exit code, and nothing left behind."""

import os
import re
import subprocess

import pytest

from conftest import chjoin_path

ERROR_LINE = re.compile(r"^chjoin\[\d+\]: error: (.+)\n$")


def mount_count():
    with open("/proc/self/mountinfo") as f:
        return sum(1 for _ in f)


def chjoin_leftovers(tmpdir):
    """Things of chjoin a failed launch could leave: host temp files, /dev/shm objects, processes."""
    files = [n for n in os.listdir(tmpdir) if "chjoin" in n or "passwd" in n or "group" in n]
    shm = [n for n in os.listdir("/dev/shm") if "chjoin" in n]
    # the chjoin under test only: other checkouts' test runs may share this machine
    procs = subprocess.run(["pgrep", "-f", chjoin_path()], capture_output=True, text=True).stdout
    return files, shm, procs.split()


CASES = [
    # (arguments, with {img} and {host} filled in, exit code, message pattern)
    (["/nonexistent", "--", "true"], 31, "^can't stat: /nonexistent: No such file or directory$"),
    (["{host}/file", "--", "true"], 31, "unknown image type"),
    (["-b", "", "{img}", "--", "true"], 31, "--bind: no source provided"),
    (["-b", ":/mnt", "{img}", "--", "true"], 31, "--bind: no source provided"),
    (["-b", "{host}:", "{img}", "--", "true"], 31, "--bind: no destination provided"),
    (["-b", "{host}:mnt", "{img}", "--", "true"], 31, "--bind: destination must be absolute"),
    (["-b", "{host}:/", "{img}", "--", "true"], 31, "--bind: destination can't be /"),
    (["-b", "/no/such/dir:/mnt", "{img}", "--", "true"], 31, "source not found: /no/such/dir"),
    (["-b", "{host}:/not/there", "{img}", "--", "true"], 31,
     "^can't bind: destination not found: {img}/not/there$"),
    (["-b", "{host}:/etc/image-file", "{img}", "--", "true"], 31,
     "^can't bind {host} at {img}/etc/image-file: Not a directory$"),
    (["-W", "-b", "{host}/file:/mnt", "{img}", "--", "true"], 31,
     "^can't bind {host}/file at {img}/mnt: Not a directory$"),
    (["-W1x", "{img}", "--", "true"], 31, "^cannot mount tmpfs for overlay: Invalid argument$"),
    (["-W", "-b", "{host}:/escape/x", "{img}", "--", "true"], 31, "outside the image"),
    (["-W", "-b", "{host}:/etc/image-file/x/y", "{img}", "--", "true"], 31,
     "^can't mkdir: exists but not a directory: {img}/etc/image-file$"),
    (["-W", "-b", "{host}:/tmp/x/y", "{img}", "--", "true"], 31,
     "^can't mkdir: {img}/tmp/x under existing bind-mount {img}/tmp$"),
    (["--set-env=NOEQUALS_FILE_MISSING", "{img}", "--", "true"], 31,
     "^can't open: NOEQUALS_FILE_MISSING: No such file or directory$"),
    (["--set-env={host}/bad-env", "{img}", "--", "true"], 31,
     "^can't parse variable: no delimiter: {host}/bad-env:2$"),
    (["--set-env==x", "{img}", "--", "true"], 31, "^can't parse variable: empty name: =x$"),
    (["--set-env={host}/nul-env", "{img}", "--", "true"], 31, "NUL byte: .*nul-env:2$"),
    (["--set-env=", "{img}", "--", "true"], 31, "non-zero length"),
    (["-c", "/nope", "{img}", "--", "true"], 31, "can't cd to /nope"),
    (["-v", "-q", "{img}", "--", "true"], 31, "--quiet incompatible with --verbose"),
    (["-u", "abc", "{img}", "--", "true"], 31, "--uid: no digits found"),
    (["-u", "-1", "{img}", "--", "true"], 31, "--uid: must be non-negative"),
    (["-g", "7x", "{img}", "--", "true"], 31, "--gid: extra characters after digits"),
    (["-w", "-s", "{host}/storage", "named", "--", "true"], 31, "--write invalid when running by name"),
    (["--feature=nonsense"], 31, "unknown feature: nonsense"),
    (["--join-ct=a", "{img}", "--", "true"], 31, "^--join-ct: no digits found$"),
    (["--join-ct=1a", "{img}", "--", "true"], 31, "^--join-ct: extra characters after digits$"),
    (["--join-ct=0", "{img}", "--", "true"], 31, "^join: no valid peer group size found$"),
    (["-j", "{img}", "--", "true"], 31, "^join: no valid peer group size found$"),
    (["--join-ct=2", "--join-tag=", "{img}", "--", "true"], 31, "tag cannot be empty string"),
    (["--join-ct=2", "--join-timeout=soon", "{img}", "--", "true"], 31,
     "--join-timeout: must be a positive number of seconds"),
    (["--join-ct=2", "--join-timeout=0", "{img}", "--", "true"], 31, "positive number"),
    (["--join-pid=abc", "{img}", "--", "true"], 31, "--join-pid: no digits found"),
    (["--join-pid=999999999", "{img}", "--", "true"], 31,
     "join: no PID 999999999: /proc/999999999/ns/user not found"),
    (["-j", "--join-pid=1", "{img}", "--", "true"], 31, "--join-pid can't be combined"),
    (["{img}", "--", "no-such-command"], 49,
     "^can't exec: no-such-command: No such file or directory$"),
    (["-qqq", "{img}", "--", "no-such-command"], 49, "^can't exec: no-such-command: "),
    (["-W", "/", "--", "true"], 31, "^--write-fake invalid with the host's root as image"),
    (["{img}"], 31, "no command given and can't read /ch/metadata.json: No such file or "
                    "directory"),
    ([], 64, "^missing IMAGE: chjoin \\[OPTIONS\\] IMAGE -- CMD"),
    (["-v"], 64, "^missing IMAGE"),
    (["--no-such-option", "{img}", "--", "true"], 64, "^unknown option: --no-such-option "),
    (["-x", "{img}", "--", "true"], 64, "^unknown option: -x "),
    (["--bind"], 64, "^option --bind requires an argument$"),
    (["--write=yes", "{img}", "--", "true"], 64, "^option --write takes no value$"),
    (["--timings=FILE", "{img}", "--", "true"], 64, "^option --timings takes no value$"),
    (["--unsafe=yes", "{img}", "--", "true"], 64, "^option --unsafe takes no value$"),
    (["--join-ct=2", "-b", "{host}:/proc/", "{img}", "--", "true"], 31,
     "^--bind: /proc can't be replaced with --join: "),
    # empty values, in ch-run's words
    (["{img}", "--", ""], 49, "^can't exec: : No such file or directory$"),
    (["-c", "", "{img}", "--", "true"], 31, "^can't cd to : No such file or directory$"),
    (["-m", "", "{img}", "--", "true"], 31, "^mount point can't be empty string$"),
    # a directory that is no image, even with -w: ch-run's required binds are never made
    (["-w", "{host}/empty", "--", "true"], 31,
     "^can't bind: destination not found: {host}/empty/dev$"),
    # options anywhere before `--`, each checked as it is met (glibc getopt, as ch-run's argp)
    (["{img}", "echo", "-n", "x"], 64, "^unknown option: -n "),
    (["{img}", "-u", "abc", "--", "true"], 31, "^--uid: no digits found$"),
    (["-u", "abc", "--help"], 31, "^--uid: no digits found$"),
    (["-g", "99999999999"], 31, "^--gid: out of range$"),
    (["-vvvv", "{img}", "--", "true"], 31, "^--verbose can be specified at most thrice$"),
    (["--ver", "{img}", "--", "true"], 64,
     "^option '--ver' is ambiguous; possibilities: '--verbose' '--version'$"),
]


@pytest.fixture
def bad_setup(image, host_dir):
    (image / "escape").unlink(missing_ok=True)
    (image / "escape").symlink_to("../../../../../../etc")
    (host_dir / "bad-env").write_text("GOOD=1\nBAD\n")
    os.chmod(host_dir / "bad-env", 0o644)
    (host_dir / "nul-env").write_bytes(b"GOOD=1\nA=x\0S\0EVIL\0y\n")
    os.chmod(host_dir / "nul-env", 0o644)
    (host_dir / "storage" / "img" / "named").mkdir(parents=True)
    (host_dir / "empty").mkdir(exist_ok=True)
    os.chmod(host_dir / "empty", 0o777)     # -w on it could make dev/, proc/... as the user
    yield {"img": str(image), "host": str(host_dir), "storage": str(host_dir / "storage")}
    (image / "escape").unlink()


@pytest.mark.parametrize("args, code, message", CASES,
                         ids=[" ".join(c[0]).replace("{img}", "IMG") for c in CASES])
def test_bad_input_is_one_error_line_and_exit_code(as_user, bad_setup, args, code, message):
    mounts = mount_count()
    before = chjoin_leftovers("/tmp")
    args = [a.format(**bad_setup) for a in args]
    message = message.format(**{k: re.escape(v) for k, v in bad_setup.items()})
    # an existing storage directory: else a missing image also warns that storage is missing
    result = as_user.run(*args, env={"CH_IMAGE_STORAGE": bad_setup["storage"]})
    assert result.returncode == code, result.stderr
    match = ERROR_LINE.match(result.stderr)
    assert match, f"not one error line: {result.stderr!r}"
    assert re.search(message, match.group(1)), match.group(1)
    assert mount_count() == mounts
    assert chjoin_leftovers("/tmp") == before
    assert os.listdir(bad_setup["host"] + "/empty") == []


def test_home_without_HOME_is_refused_in_ch_runs_words(as_user, image):
    result = as_user.run("--home", image, "--", "true", env={"HOME": None})
    assert (result.returncode, ERROR_LINE.match(result.stderr).group(1)) == \
        (31, "--home: $HOME not set")


def test_a_failed_launch_reprints_its_warnings_after_the_error(as_user, image):
    result = as_user.run("-s", "/no/such/storage", "-b", "/no/such/dir:/mnt", image, "--", "true",
                         env={"PATH": None})
    assert result.returncode == 31
    pid = re.match(r"chjoin\[(\d+)\]", result.stderr).group(1)
    warnings = [f"chjoin[{pid}]: warning: storage directory not found: /no/such/storage",
                f"chjoin[{pid}]: warning: $PATH not set"]
    assert result.stderr.splitlines() == [
        *warnings, f"chjoin[{pid}]: error: can't bind: source not found: /no/such/dir",
        f"chjoin[{pid}]: warning: reprinting first 2 warning(s)", *warnings]


def test_a_launch_that_succeeds_does_not_reprint_its_warnings(as_user, image):
    result = as_user.run("-s", "/no/such/storage", image, "--", "true")
    assert result.returncode == 0
    assert "reprinting" not in result.stderr


def test_join_pid_of_another_users_process_is_refused_in_ch_runs_words(as_user, image):
    if as_user.uid == 0:
        pytest.skip("root may enter any process's namespaces")
    result = as_user.run("--join-pid=1", image, "--", "true")
    assert result.returncode == 31
    assert re.fullmatch(r"join: can't open /proc/1/ns/user: .+",
                        ERROR_LINE.match(result.stderr).group(1)), result.stderr


def test_options_may_follow_image_and_long_ones_may_be_abbreviated(as_user, image):
    result = as_user.run(image, "--private-t", "-c", "/etc", "--", "sh", "-c",
                         'pwd; stat -f -c %T /tmp')
    assert (result.returncode, result.stdout) == (0, "/etc\ntmpfs\n"), result.stderr
    result = as_user.run(image, "ls", "--", "-d", "/")      # CMD: the words around `--`
    assert (result.returncode, result.stdout) == (0, "/\n"), result.stderr


def test_posixly_correct_makes_the_words_after_image_the_command(as_user, image):
    result = as_user.run(image, "-v", "x", env={"POSIXLY_CORRECT": "1"})
    assert result.returncode == 49
    assert ERROR_LINE.match(result.stderr).group(1) == "can't exec: -v: No such file or directory"


def test_a_bind_over_proc_is_the_containers_proc_as_in_ch_run(as_user, image, host_dir):
    """The id maps of the inner namespace are written through the /proc chjoin had before the
    binds, so a user's directory at /proc does not break the launch."""
    result = as_user.run("-b", f"{host_dir}:/proc", image, "--", "cat", "/proc/file")
    assert (result.returncode, result.stdout) == (0, "from the host\n"), result.stderr
