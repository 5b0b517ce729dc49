"""A single container, as a user sees it: identity, filesystem, environment, exit codes.

Every test runs twice, as root and as the unprivileged test user (the `as_user` fixture).
"""

import os
import signal

import pytest


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_command_runs_as_the_invoking_ids(as_user, image):
    assert ok(as_user.run(image, "--", "id", "-u")).strip() == str(as_user.uid)
    assert ok(as_user.run(image, "--", "id", "-g")).strip() == str(as_user.gid)


def test_uid_and_gid_options_change_the_container_ids(as_user, image):
    out = ok(as_user.run("-u", "1234", "-g", "5678", image, "--", "sh", "-c", "id -u; id -g"))
    assert out.split() == ["1234", "5678"]


def test_container_is_a_nested_user_namespace_with_setgroups_denied(as_user, image):
    out = ok(as_user.run("-u", "77", image, "--", "sh", "-c",
                         "cat /proc/self/uid_map /proc/self/setgroups"))
    assert out.split() == ["77", "0", "1", "deny"]
    host_userns = os.stat("/proc/self/ns/user").st_ino
    inside = ok(as_user.run(image, "--", "stat", "-L", "-c", "%i", "/proc/self/ns/user"))
    assert int(inside) != host_userns


def test_root_is_read_only_by_default(as_user, image):
    result = as_user.run(image, "--", "touch", "/newfile")
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr


def test_write_option_writes_into_the_image(as_user, own_image):
    ok(as_user.run("-w", own_image, "--", "sh", "-c", "echo kept > /newfile"))
    assert (own_image / "newfile").read_text() == "kept\n"


def test_write_fake_writes_vanish_at_exit(as_user, image):
    ok(as_user.run("-W", image, "--", "sh", "-c", "echo gone > /newfile; cat /newfile"))
    assert not (image / "newfile").exists()
    ok(as_user.run("--write-fake=1m", image, "--", "sh", "-c", "touch /a"))


def test_write_fake_size_limits_the_tmpfs(as_user, image):
    result = as_user.run("-W1m", image, "--", "sh", "-c",
                         "dd if=/dev/zero of=/big bs=1024 count=4096")
    assert result.returncode != 0
    assert "No space left on device" in result.stderr


def test_bind_directory_at_existing_destination(as_user, image, host_dir):
    assert ok(as_user.run("-b", f"{host_dir}:/mnt", image, "--", "cat", "/mnt/file")) == \
        "from the host\n"


def test_bind_file_onto_existing_file(as_user, image, host_dir):
    out = ok(as_user.run("-b", f"{host_dir}/file:/etc/image-file", image, "--",
                         "cat", "/etc/image-file"))
    assert out == "from the host\n"


def test_bind_without_destination_uses_source_path_when_writable(as_user, image, host_dir):
    out = ok(as_user.run("-W", "-b", str(host_dir), image, "--", "cat", f"{host_dir}/file"))
    assert out == "from the host\n"


def test_bind_creates_missing_destination_under_write_fake(as_user, image, host_dir):
    out = ok(as_user.run("-W", "-b", f"{host_dir}:/opt/deep/new", "-b",
                         f"{host_dir}/file:/opt/single", image, "--", "sh", "-c",
                         "cat /opt/deep/new/file /opt/single"))
    assert out == "from the host\n" * 2


def test_bind_under_an_unwritable_directory_overmounts_it(as_user, image, host_dir):
    # /bin belongs to host root: the unprivileged user can't mkdir there, even in the overlay.
    out = ok(as_user.run("-W", "-b", f"{host_dir}:/bin/newdir", image, "--", "sh", "-c",
                         "cat /bin/newdir/file; ls /bin | grep -c ."))
    lines = out.split()
    assert lines[0:3] == ["from", "the", "host"]
    assert int(lines[3]) > 100  # busybox's applets are all still there


def test_bind_creates_destination_under_write(as_user, own_image, host_dir):
    ok(as_user.run("-w", "-b", f"{host_dir}:/mnt/made", own_image, "--", "cat", "/mnt/made/file"))
    assert (own_image / "mnt" / "made").is_dir()


def test_binds_are_mounted_in_command_line_order_a_later_one_covering_an_earlier(
        as_user, image, host_dir):
    # as ch-run: the defaults (/etc/passwd too) first, then the user's binds as given
    assert ok(as_user.run("-b", f"{host_dir}:/etc", image, "--", "ls", "/etc")) == "file\n"
    out = ok(as_user.run("-W", "-b", f"{host_dir}:/mnt/sub", "-b", f"{host_dir}:/mnt", image,
                         "--", "ls", "/mnt"))
    assert out == "file\n"


def test_the_first_bad_bind_on_the_command_line_is_the_one_named(as_user, image, host_dir):
    result = as_user.run("-b", f"{host_dir}:/opt/nowhere", "-b", f"{host_dir}:/mnt/sub",
                         "-b", f"{host_dir}:/mnt", image, "--", "true")
    assert result.returncode == 31
    assert result.stderr.strip().endswith(f"can't bind: destination not found: {image}/opt/nowhere")
    result = as_user.run("-b", f"{host_dir}:/mnt/sub", "-b", f"{host_dir}:/mnt", image,
                         "--", "true")
    assert result.stderr.strip().endswith(f"can't bind: destination not found: {image}/mnt/sub")


def test_generated_passwd_and_group(as_user, image):
    out = ok(as_user.run(image, "--", "sh", "-c", "cat /etc/passwd; echo --; cat /etc/group"))
    passwd, group = out.split("--\n")
    names = [line.split(":")[0] for line in passwd.splitlines()]
    assert names == (["nobody", "root"] if as_user.uid == 0 else ["root", "nobody", as_user.name])
    assert f"{as_user.name}:x:{as_user.uid}:{as_user.gid}:" in passwd
    assert f":{as_user.gid}:" in group


def test_unknown_uid_is_charlie(as_user, image):
    out = ok(as_user.run("-u", "54321", "-g", "54321", image, "--", "sh", "-c",
                         "cat /etc/passwd /etc/group; whoami"))
    assert "charlie:x:54321:54321:Charlie:/:/bin/sh" in out
    assert "charliegroup:x:54321:" in out
    assert out.split()[-1] == "charlie"


def test_no_passwd_keeps_the_image_files(as_user, image):
    assert ok(as_user.run("--no-passwd", image, "--", "cat", "/etc/passwd")) == ""


def test_tmp_is_the_hosts_unless_private(as_user, image, host_dir):
    env = {"TMPDIR": str(host_dir)}
    assert ok(as_user.run(image, "--", "cat", "/tmp/file", env=env)) == "from the host\n"
    result = as_user.run("-t", image, "--", "sh", "-c", "ls -A /tmp; touch /tmp/x", env=env)
    assert ok(result) == ""


def test_home_binds_host_home_and_sets_HOME(as_user, image):
    out = ok(as_user.run("--home", image, "--", "sh", "-c", "echo $HOME; ls -d $HOME; touch /w"))
    assert out.split() == [f"/home/{as_user.name}"] * 2


def test_cd_sets_the_working_directory(as_user, image):
    assert ok(as_user.run("-c", "/etc", image, "--", "pwd")) == "/etc\n"
    assert ok(as_user.run(image, "--", "pwd")) == "/\n"


def test_environment_rules(as_user, image, host_dir):
    out = ok(as_user.run(image, "--", "env", env={"TMPDIR": str(host_dir), "PATH": "/usr/bin"}))
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert env["HOME"] == "/root"
    assert env["PATH"] == "/usr/bin:/bin"
    assert "TMPDIR" not in env
    assert env["CH_RUNNING"] == "Weird Al Yankovic"


@pytest.mark.parametrize("given", [{}, {"LC_CTYPE": "C"}, {"LANG": "C"}, {"LC_CTYPE": ""},
                                   {"LC_ALL": "", "LC_CTYPE": "C"}, {"LC_ALL": "C"}])
@pytest.mark.parametrize("join", [[], ["--join-ct=1"]])
def test_the_locale_is_passed_as_given_python_adds_no_lc_ctype(as_user, image, given, join):
    # Python in the C locale sets LC_CTYPE=C.UTF-8 in its own environment (PEP 538); the
    # command must not inherit it: ch-run passes the environment as it is
    out = ok(as_user.run(*join, image, "--", "env", env={"LANG": None, **given}))
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert {k: v for k, v in env.items() if k.startswith(("LC_", "LANG"))} == given


def test_set_env_direct_file_and_nul_file(as_user, image, host_dir):
    (host_dir / "env").write_text("A=1\n\nB='quoted value'\nC=$A:$NOPE:/x\n")
    (host_dir / "env0").write_bytes(b"D=multi\nline\0E=5\0")
    os.chmod(host_dir / "env", 0o644)
    os.chmod(host_dir / "env0", 0o644)
    out = ok(as_user.run("--set-env=Z=9", f"--set-env={host_dir}/env",
                         f"--set-env0={host_dir}/env0", image, "--", "env"))
    assert "Z=9\n" in out and "A=1\n" in out and "B=quoted value\n" in out
    assert "C=1:/x\n" in out and "D=multi\nline\n" in out and "E=5\n" in out


def test_set_env_bare_reads_the_images_environment(as_user, image):
    out = ok(as_user.run("--set-env", image, "--", "env", env={"PATH": "/bin"}))
    assert "FROM_IMAGE=yes\n" in out and "IMAGE_PATH=/opt/bin:/bin\n" in out


def test_env_no_expand_keeps_dollar_in_every_set_env(as_user, image):
    out = ok(as_user.run("--set-env=A=$USER", "--env-no-expand", "--set-env=B=$USER",
                         image, "--", "env"))
    assert "A=$USER\n" in out and "B=$USER\n" in out


def test_unset_env_globs_and_extglob(as_user, image):
    env = {"FOO_1": "a", "FOO_2": "b", "KEEP": "c"}
    out = ok(as_user.run("--unset-env=FOO_*", image, "--", "env", env=env))
    assert "FOO_" not in out and "KEEP=c" in out
    out = ok(as_user.run("--unset-env=!(PATH|KEEP)", image, "--", "env", env=env))
    names = sorted(line.split("=")[0] for line in out.splitlines())
    assert names == ["CH_RUNNING", "KEEP", "PATH", "PWD"]


def test_set_and_unset_apply_in_command_line_order(as_user, image):
    out = ok(as_user.run("--set-env=X=1", "--unset-env=X", "--set-env=Y=2", image, "--", "env"))
    assert "X=" not in out and "Y=2" in out


def test_exit_status_of_the_command_is_returned(as_user, image):
    assert as_user.run(image, "--", "sh", "-c", "exit 7").returncode == 7


def test_command_killed_by_a_signal_reports_the_signal(as_user, image):
    assert as_user.run(image, "--", "sh", "-c", "kill -TERM $$").returncode == -signal.SIGTERM


def test_command_is_found_with_the_containers_path(as_user, image):
    assert ok(as_user.run(image, "--", "which", "sh")) == "/bin/sh\n"


def test_no_new_privs_is_set(as_user, image):
    out = ok(as_user.run(image, "--", "grep", "NoNewPrivs", "/proc/self/status"))
    assert out.split() == ["NoNewPrivs:", "1"]




def test_image_by_name_from_storage(as_user, image, host_dir):
    storage = host_dir / "storage"
    (storage / "img").mkdir(parents=True)
    (storage / "img" / "example.com%foo+1.0").symlink_to(image)
    out = ok(as_user.run("-s", storage, "example.com/foo:1.0", "--", "cat", "/etc/image-file"))
    assert out == "from the image\n"


def test_version_and_help(as_user):
    assert ok(as_user.run("--version")).strip()
    help_text = ok(as_user.run("--help"))
    for option in ("--bind", "--write-fake", "--set-env0", "--unset-env", "--private-tmp"):
        assert option in help_text


@pytest.mark.parametrize("feature, code", [("extglob", 0), ("overlayfs", 0), ("seccomp", 0)])
def test_feature_reports_support(as_user, feature, code):
    assert as_user.run(f"--feature={feature}").returncode == code
