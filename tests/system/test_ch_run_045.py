"""What chjoin does as ch-run 0.45 does, where it once did not (issue 12): binds of one source
at several places, PWD, a lone `$` in --set-env, the -q levels, the host's root as image, the
warnings, --unsafe, and ch-run's -v and -vv lines. Each test runs as root and as the test user.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import build_busybox_image

WARNING = "warning: storage directory not found: /no/such/storage"


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


# 2. PWD is the initial directory, set last.

def test_pwd_is_the_initial_directory_not_the_hosts(as_user, image):
    assert environment(ok(as_user.run("--cd", "/etc", image, "--", "env",
                                      env={"PWD": "/tmp"})))["PWD"] == "/etc"
    assert environment(ok(as_user.run(image, "--", "env", env={"PWD": "/tmp"})))["PWD"] == "/"


def test_pwd_is_set_after_unset_env(as_user, image):
    out = ok(as_user.run("--unset-env=*", image, "--", "env", env={"PWD": "/tmp"}))
    assert environment(out) == {"PWD": "/", "CH_RUNNING": "Weird Al Yankovic"}


# 3. Only $NAME with a name is expanded.

def test_set_env_keeps_a_lone_dollar(as_user, image):
    env = environment(ok(as_user.run("--set-env=X=bar:$", "--set-env=Y=$:bar",
                                      "--set-env=Z=$USER:$", image, "--", "env")))
    assert (env["X"], env["Y"], env["Z"]) == ("bar:$", "$:bar", f"{as_user.name}:$")


# 4. -q hides stdout, -qq also warnings, -qqq also stderr.

QUIET_CMD = ["--", "sh", "-c", "echo out; echo err >&2"]


def test_quiet_once_hides_the_commands_stdout_and_keeps_warnings(as_user, image):
    result = as_user.run("-q", "-s", "/no/such/storage", image, *QUIET_CMD)
    assert (result.returncode, result.stdout) == (0, "")
    assert WARNING in result.stderr and result.stderr.endswith("err\n")


def test_quiet_twice_also_hides_warnings(as_user, image):
    result = as_user.run("-qq", "-s", "/no/such/storage", image, *QUIET_CMD)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "err\n")


def test_quiet_thrice_also_hides_the_commands_stderr(as_user, image):
    result = as_user.run("-qqq", "-s", "/no/such/storage", image, *QUIET_CMD)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


# 5. The host's root as image.

HOST_WARNING = "image is the host's root (/)"


def test_host_root_as_image_runs_on_the_hosts_tree_in_new_namespaces(as_user):
    result = as_user.run("/", "--", "sh", "-c",
                         "readlink /proc/self/ns/mnt; cat /proc/self/uid_map; "
                         "cat /etc/passwd; id -u")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""                  # as ch-run: said at -v only
    assert HOST_WARNING.replace("warning: ", "") in as_user.run("-v", "/", "--", "true").stderr
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


# 7. Warnings.

def test_missing_path_is_warned_about(as_user, image):
    result = as_user.run(image, "--", "/bin/true", env={"PATH": None})
    assert result.returncode == 0, result.stderr
    assert "warning: $PATH not set\n" in result.stderr


def test_missing_storage_given_with_s_is_warned_about(as_user, image):
    result = as_user.run("-s", "/no/such/storage", image, "--", "true")
    assert result.returncode == 0, result.stderr
    assert result.stderr.endswith(WARNING + "\n")


def test_missing_default_storage_is_warned_about_when_a_name_is_looked_up(as_user, image):
    env = {"CH_IMAGE_STORAGE": "/no/such/storage"}
    assert ok(as_user.run(image, "--", "true", env=env)) == ""
    result = as_user.run("no-such-name", "--", "true", env=env)
    assert result.returncode == 31
    assert result.stderr.splitlines()[0].endswith(WARNING)
    assert "error: can't stat: no-such-name: No such file or directory" in result.stderr


# 8. --unsafe.

def storage_with_image(as_user, host_dir):
    storage = host_dir / "storage"
    build_busybox_image(storage / "img" / "inside")
    as_user.own(storage)
    return storage


def test_a_directory_image_inside_storage_needs_unsafe(as_user, host_dir):
    storage = storage_with_image(as_user, host_dir)
    path = storage / "img" / "inside"
    result = as_user.run("-s", storage, path, "--", "true")
    assert result.returncode == 31
    assert "can't run directory images from storage (hint: run by name)" in result.stderr
    assert ok(as_user.run("--unsafe", "-s", storage, path, "--", "echo", "ran")) == "ran\n"


def test_a_directory_image_anywhere_inside_storage_needs_unsafe(as_user, host_dir):
    """As ch-run's path_subdir_p: not only under img/, anywhere inside the storage directory."""
    storage = storage_with_image(as_user, host_dir)
    path = build_busybox_image(storage / "elsewhere" / "image")
    as_user.own(storage)
    result = as_user.run("-s", storage, path, "--", "true")
    assert result.returncode == 31
    assert result.stderr.endswith(": error: can't run directory images from storage (hint: run "
                                  "by name)\n"), result.stderr
    assert ok(as_user.run("--unsafe", "-s", storage, path, "--", "echo", "ran")) == "ran\n"
    assert ok(as_user.run("-s", storage / "img", path, "--", "echo", "ran")) == "ran\n"


def test_write_on_an_image_run_by_name_needs_unsafe(as_user, host_dir):
    storage = storage_with_image(as_user, host_dir)
    result = as_user.run("-w", "-s", storage, "inside", "--", "touch", "/new")
    assert result.returncode == 31 and "--write invalid when running by name" in result.stderr
    ok(as_user.run("--unsafe", "-w", "-s", storage, "inside", "--", "touch", "/new"))
    assert (storage / "img" / "inside" / "new").exists()
    shutil.rmtree(storage)


# Messages at -v and -vv.

def test_verbose_reports_the_command_and_dummy_ids(as_user, image):
    result = as_user.run("-v", "-u", "54321", "-g", "54322", image, "--", "echo", "a", "b")
    assert result.returncode == 0, result.stderr
    lines = [re.sub(r"^chjoin\[\d+\]: ", "", line) for line in result.stderr.splitlines()]
    assert "UID 54321 not found; using dummy info" in lines     # ch-run's form: no "info: "
    assert "GID 54322 not found; using dummy info" in lines
    assert lines[-1] == "executing: echo a b"


def test_very_verbose_reports_each_variable_set(as_user, image):
    result = as_user.run("-vv", "--set-env=A=1", "--set-env=B=$A:2", image, "--", "true")
    assert result.returncode == 0, result.stderr
    lines = [re.sub(r"^chjoin\[\d+\]: ", "", line) for line in result.stderr.splitlines()]
    assert "environment: A=1" in lines                         # ch-run's form: no "debug: "
    assert "environment: B=1:2" in lines
    assert "environment:" not in as_user.run("-v", "--set-env=A=1", image, "--", "true").stderr
