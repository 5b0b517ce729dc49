"""chjoinctl, the admin tool: check, ps, gc and spank, on this machine's real states, as root
and as the unprivileged test user. Other processes (a soak) may run chjoin here at the same
time: every test uses tags of its own and looks at its own records only."""

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for, world_readable_dir


def chjoinctl_path(runner):
    return str(Path(runner.chjoin).parent / "chjoinctl")


def ctl(runner, *args, env=None, prefix=(), timeout=60):
    """chjoinctl ARGS as `runner`'s identity; the CompletedProcess."""
    return subprocess.run([*prefix, chjoinctl_path(runner), *map(str, args)],
                          capture_output=True, text=True, env=runner.env(env), cwd="/",
                          timeout=timeout, **runner.identity_kwargs())


def ps(runner, *args):
    done = ctl(runner, "ps", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["records"]


def own_tag(runner, what):
    return f"ctl-{what}-{runner.who}-{os.getpid()}"


def stale_group(runner, image, tag):
    """A group whose every process was SIGKILLed at once (as after a node's OOM killer): the
    winner runs `sleep`, its holder keeps the container for a peer that never comes."""
    proc = subprocess.Popen([runner.chjoin, "--join-ct=2", f"--join-tag={tag}",
                             "--join-timeout=60", str(image), "--", "sleep", "60"],
                            env=runner.env(), cwd="/", start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            **runner.identity_kwargs())
    wait_for(lambda: [g for r in ps(runner, "--tag", tag) for g in r["groups"]
                      if g["state"] == "READY" and g["processes"]], 30, "the group")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: all(r["stale"] for r in ps(runner, "--tag", tag)), 10, "the kill")


# --- ps -----------------------------------------------------------------------------------

def test_ps_shows_a_live_group_with_ranks_waiting_and_inside(as_user, image):
    """Four ranks: two get in and run `sleep`; two arrive later and are stopped (SIGSTOP) as
    they start waiting, so that ps sees them WAITING in a READY group."""
    tag = own_tag(as_user, "live")
    ranks = [{}, {}, {"at": 1.0, "env": {"CHJOIN_TEST_STOP": "peer:wait"}},
             {"at": 1.0, "env": {"CHJOIN_TEST_STOP": "peer:wait"}}]
    result = {}
    thread = threading.Thread(target=lambda: result.update(group=as_user.group(
        ["--join-ct=4", f"--join-tag={tag}", image, "--", "sleep", "4"], ranks,
        kill_delay=4)))
    thread.start()
    try:
        records = wait_for(lambda: [r for r in ps(as_user, "--tag", tag)
                                    if r["groups"] and r["groups"][0]["waiting"] == 2
                                    and r["groups"][0]["arrived"] == 4], 20,
                           "two waiting ranks of four")
        text = ctl(as_user, "ps", "--tag", tag).stdout
    finally:
        thread.join()
    [record] = records
    [group] = record["groups"]
    assert record["uid"] == as_user.uid and not record["stale"]
    assert (group["state"], group["arrived"], group["expected"]) == ("READY", 4, 4)
    assert group["inside"] == 2 and group["holder_alive"] and not group["stale"]
    assert group["image"] == str(image)
    comms = sorted(p["comm"] for p in group["processes"])
    assert comms == ["chjoin-holder", "sleep", "sleep"]
    assert {p["pid"] for p in group["processes"]} >= {group["holder"]}
    # the text says the same
    line = next(line for line in text.splitlines() if line.startswith(tag))
    assert line.split()[1:4] == [str(as_user.uid), "READY", "4/4"]
    assert str(group["holder"]) in line and str(image) in line
    waiting = [s["pid"] for s in group["slots"] if s["state"] == "waiting"]
    assert f"    ranks waiting: {' '.join(map(str, waiting))}" in text
    assert "(chjoin-holder)" in text and "(sleep)" in text
    assert result["group"].returncodes[:2] == [0, 0]


def test_ps_marks_a_sigkilled_group_stale_and_gc_removes_it(as_user, image):
    tag = own_tag(as_user, "stale")
    stale_group(as_user, image, tag)
    [record] = ps(as_user, "--tag", tag)
    assert record["stale"] and record["groups"][0]["stale"]
    assert not record["groups"][0]["holder_alive"]
    assert "READY (stale)" in ctl(as_user, "ps", "--tag", tag).stdout
    dry = ctl(as_user, "gc", "--tag", tag, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [f"would remove {record['path']}",
                                       f"would remove /dev/shm/sem.{record['path'][9:]}"]
    assert os.path.exists(record["path"])
    done = ctl(as_user, "gc", "--tag", tag, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"dry_run": False, "holders": [], "problems": [],
                                       "removed": [record["path"],
                                                   f"/dev/shm/sem.{record['path'][9:]}"]}
    assert not os.path.exists(record["path"])
    assert ps(as_user, "--tag", tag) == []


@pytest.fixture
def other_users_record(image, chjoin):
    """A stale record of the test user, made by the test user; removed afterwards."""
    from conftest import Runner
    runner = Runner(chjoin, "user")
    tag = f"ctl-other-{os.getpid()}"
    stale_group(runner, image, tag)
    yield runner, tag
    ctl(runner, "gc", "--tag", tag)


def test_another_users_record_is_visible_to_root_only(chjoin, image, other_users_record):
    from conftest import Runner
    if os.geteuid() != 0:
        pytest.skip("needs root")
    user, tag = other_users_record
    root = Runner(chjoin, "root")
    assert [r["uid"] for r in ps(root, "--tag", tag)] == [user.uid]
    assert ps(root, "--tag", tag, "--uid", 0) == []
    refused = ctl(user, "ps", "--uid", "0")
    assert refused.returncode == 2 and "only root" in refused.stderr


# --- gc -----------------------------------------------------------------------------------

def test_gc_never_touches_a_group_being_formed(as_user, image):
    """gc runs in a loop on the tag while three staggered ranks form their group and run: the
    group completes, and gc never removed or dismissed anything."""
    tag = own_tag(as_user, "forming")
    stop = threading.Event()
    outputs = []

    def loop():
        while not stop.is_set():
            outputs.append(ctl(as_user, "gc", "--tag", tag, "--json").stdout)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        group = as_user.group(["--join-ct=3", f"--join-tag={tag}", image, "--", "sleep", "1"],
                              [{}, {"at": 0.5}, {"at": 1.0}])
    finally:
        stop.set()
        thread.join()
    assert group.returncodes == [0, 0, 0], [r.stderr for r in group.ranks]
    assert len(outputs) > 2
    reports = [json.loads(out) for out in outputs]
    assert all(r["holders"] == [] for r in reports)
    # it may remove the names of a group just ended (nothing uses them), never before
    assert sum(bool(r["removed"]) for r in reports) <= 1


def test_gc_dismisses_the_holder_of_a_group_that_is_over(as_user, image):
    """The holder is stopped (SIGSTOP), so it can't end its group at the deadline: the group
    is over (its peer never came; 1 s + grace passed), yet a live process holds it. gc ends it
    as a rank would: the holder goes, then the names."""
    tag = own_tag(as_user, "over")
    done = subprocess.run([as_user.chjoin, "--join-ct=2", f"--join-tag={tag}",
                           "--join-timeout=1", str(image), "--", "true"],
                          env=as_user.env({"CHJOIN_TEST_STOP": "holder:ready"}), cwd="/",
                          capture_output=True, text=True, timeout=30,
                          **as_user.identity_kwargs())
    assert done.returncode == 0, done.stderr
    [record] = wait_for(lambda: [r for r in ps(as_user, "--tag", tag)
                                 if r["groups"] and r["groups"][0]["holder_alive"]], 10,
                        "the stopped holder")
    holder = record["groups"][0]["holder"]
    assert not record["stale"]
    time.sleep(3.5)           # past the deadline and its grace
    gc = ctl(as_user, "gc", "--tag", tag)
    assert gc.returncode == 0, gc.stderr
    assert gc.stdout.splitlines() == [f"dismiss holder pid {holder}",
                                      f"remove {record['path']}",
                                      f"remove /dev/shm/sem.{record['path'][9:]}"]
    wait_for(lambda: not os.path.exists(f"/proc/{holder}") or
             open(f"/proc/{holder}/stat").read().rpartition(")")[2].split()[0] == "Z", 10,
             "the holder to exit")
    assert ps(as_user, "--tag", tag) == []


def test_gc_with_nothing_to_remove_says_so(as_user):
    done = ctl(as_user, "gc", "--tag", own_tag(as_user, "none"))
    assert (done.returncode, done.stdout) == (0, "nothing to remove\n")


# --- check --------------------------------------------------------------------------------

def check_json(runner, *args, **kwargs):
    done = ctl(runner, "check", "--json", *args, **kwargs)
    return done.returncode, json.loads(done.stdout)


def test_check_on_this_machine_is_all_ok(as_user, image):
    done = ctl(as_user, "check", image)
    assert done.returncode == 0, done.stdout + done.stderr
    code, report = check_json(as_user, image)
    assert code == 0 and report["ok"]
    statuses = {c["check"]: c["status"] for c in report["checks"]}
    assert set(statuses.values()) == {"ok"}, report
    assert {"user namespace", "nested user namespace", "unprivileged overlayfs (-W)",
            "kernel calls (pidfd, open_tree/move_mount)", "/dev/shm", "SquashFS images",
            "SPANK plugin", "image", "image paths"} <= set(statuses)
    lines = [line for line in done.stdout.splitlines() if not line.startswith(" ")]
    assert [line[6:].split(":")[0] for line in lines] == \
        [c["check"] for c in report["checks"]]
    assert [line.split()[0] for line in lines] == [c["status"] for c in report["checks"]]


def test_check_fails_with_the_fix_where_user_namespaces_are_off(chjoin):
    """This machine inside a user namespace with user.max_user_namespaces = 0, as the prolog
    test makes one: the node can't run containers, and check says why and what to do."""
    from conftest import Runner
    if os.geteuid() != 0:
        pytest.skip("needs root")
    root = Runner(chjoin, "root")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c",
                           "echo 0 > /proc/sys/user/max_user_namespaces && "
                           'exec "$0" check', chjoinctl_path(root)],
                          capture_output=True, text=True, env=root.env(), timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "fail  user namespace sysctls: read user.max_user_namespaces = 0" in lines
    assert "      fix: sysctl -w user.max_user_namespaces=15000 (and in /etc/sysctl.d/ to " \
           "keep it)" in lines
    assert ("fail  user namespace: unshare(CLONE_NEWUSER|CLONE_NEWNS) in a child: No space "
            "left on device (user.max_user_namespaces = 0)") in lines


def test_check_warns_when_dev_fuse_is_unusable_and_fails_a_squashfs_image(chjoin, squash_dir):
    """/dev/fuse mode 0600 (no udev): a warning for the node, a failure for a SquashFS image.
    The test user sees it so in a mount namespace where a root-only file covers /dev/fuse."""
    from conftest import Runner
    if os.geteuid() != 0:
        pytest.skip("needs root")
    user = Runner(chjoin, "user")
    base = world_readable_dir("chjoin-ctl-fuse-")
    cover = base / "fuse"
    cover.write_text("")
    cover.chmod(0o600)
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              f'mount --bind {cover} /dev/fuse && exec setpriv --reuid={user.uid} '
              f'--regid={user.gid} --clear-groups "$0" "$@"']
    try:
        done = subprocess.run([*prefix, chjoinctl_path(user), "check"], capture_output=True,
                              text=True, env=user.env(), cwd="/", timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert ("warn  SquashFS images: squashfuse_ll on $PATH: /usr/bin/squashfuse_ll; "
                "/dev/fuse: /dev/fuse is mode 600: not usable by this user") in done.stdout
        assert "fix: chmod 0666 /dev/fuse" in done.stdout
        done = subprocess.run([*prefix, chjoinctl_path(user), "check", "--json",
                               str(squash_dir / "img.sqfs")], capture_output=True, text=True,
                              env=user.env(), cwd="/", timeout=60)
        assert done.returncode == 1, done.stdout + done.stderr
        report = json.loads(done.stdout)
        statuses = {c["check"]: c["status"] for c in report["checks"]}
        assert statuses["image"] == "ok" and statuses["image needs SquashFS"] == "fail"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


@pytest.fixture
def shared_dir():
    """A temporary directory both identities can read."""
    base = world_readable_dir("chjoin-ctl-")
    yield base
    subprocess.run(["rm", "-rf", str(base)], check=True)


def test_check_fails_a_plugstack_line_whose_plugin_is_missing(as_user, shared_dir):
    tmp_path = shared_dir
    plugstack = tmp_path / "plugstack.conf"
    plugstack.write_text("optional /nonexistent/lib/slurm/chjoin_spank.so builder=x\n")
    plugstack.chmod(0o644)
    code, report = check_json(as_user, "--plugstack", plugstack)
    [spank] = [c for c in report["checks"] if c["check"] == "SPANK plugin"]
    assert code == 1 and not report["ok"]
    assert spank["status"] == "fail" and "does not exist" in spank["tried"]
    assert spank["fix"].startswith("chjoinctl spank install")
    plugstack.write_text("# no chjoin here\n")
    code, report = check_json(as_user, "--plugstack", plugstack)
    [spank] = [c for c in report["checks"] if c["check"] == "SPANK plugin"]
    assert (code, spank["status"]) == (0, "warn")


def test_check_fails_an_image_without_the_paths_chjoin_mounts(as_user, shared_dir):
    tmp_path = shared_dir
    (tmp_path / "img" / "proc").mkdir(parents=True)
    (tmp_path / "img").chmod(0o755)
    code, report = check_json(as_user, tmp_path / "img")
    [paths] = [c for c in report["checks"] if c["check"] == "image paths"]
    assert code == 1 and paths["status"] == "fail"
    assert "missing /dev, /sys" in paths["tried"] and paths["fix"].startswith("mkdir -p")


# --- spank --------------------------------------------------------------------------------

def test_spank_install_into_a_prefix_then_check(chjoin, tmp_path):
    from conftest import Runner
    if os.geteuid() != 0:
        pytest.skip("needs root")
    root = Runner(chjoin, "root")
    prefix, confd = tmp_path / "prefix", tmp_path / "plugstack.conf.d"
    args = ["spank", "install", "--prefix", prefix, "--plugstack-dir", confd]
    dry = ctl(root, *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert [line.split()[:2] for line in dry.stdout.splitlines()] == \
        [["would", "build"], ["would", "install"], ["would", "write"]]
    assert not prefix.exists() and not confd.exists()
    done = ctl(root, *args, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    so = prefix / "lib" / "slurm" / "chjoin_spank.so"
    builder = Path(chjoinctl_path(root)).parent / "chjoin-spank-build"
    assert (confd / "chjoin.conf").read_text() == \
        f"optional {so} builder={builder} timeout=60\n"
    plugstack = tmp_path / "plugstack.conf"
    plugstack.write_text(f"include {confd}/*.conf\n")
    check = ctl(root, "spank", "check", "--plugstack", plugstack)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith(f"ok    SPANK plugin: {so} (from {confd}/chjoin.conf) "
                                   "built for Slurm ")
    report = json.loads(ctl(root, "spank", "check", "--json", "--plugstack", plugstack).stdout)
    assert report["status"] == "ok" and report["tried"] in check.stdout


@pytest.mark.parametrize("command", [[], ["check"], ["ps"], ["gc"], ["spank"],
                                     ["spank", "install"], ["spank", "check"], ["prolog"],
                                     ["epilog"]])
def test_every_command_has_help(chjoin, command):
    from conftest import Runner
    if os.geteuid() != 0:
        pytest.skip("system tests run as root")
    done = ctl(Runner(chjoin, "root"), *command, "--help")
    assert done.returncode == 0 and done.stdout.startswith("Usage: chjoinctl"), done.stderr


# --- prolog, epilog -----------------------------------------------------------------------

def test_epilog_removes_a_killed_jobs_record_through_the_gc_code(chjoin, image, slurm_config):
    """`chjoinctl epilog`, as slurmd would run it, for a job of a uid of its own (4242, so that
    no other record on this machine is the job's): the job's group was SIGKILLed whole."""
    from conftest import Runner
    if os.geteuid() != 0:
        pytest.skip("needs root")
    uid, job = 4242, f"{os.getpid()}"
    tag = f"slurm.{job}.0"
    proc = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                             chjoin, "--join-ct=2", f"--join-tag={tag}", str(image), "--",
                             "sleep", "60"], env=Runner(chjoin, "root").env(), cwd="/",
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    root = Runner(chjoin, "root")
    wait_for(lambda: [g for r in ps(root, "--uid", uid, "--tag", tag) for g in r["groups"]
                      if g["processes"]], 30, "the job's group")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    env = {"SLURM_JOB_ID": job, "SLURM_JOB_UID": str(uid), "SLURMD_NODENAME": "n1"}
    config = slurm_config(CHJOIN_STAGE_DIR="/nonexistent")
    done = ctl(root, "epilog", "--config", config, env=env)
    name = f"/dev/shm/chjoin-{uid}-{tag}"      # plain: uid 4242 has no private place for a key
    assert (done.returncode, done.stdout.splitlines()) == (0, [
        f"chjoin epilog: job {job} on n1: removed {name}",
        f"chjoin epilog: job {job} on n1: removed /dev/shm/sem.{name[9:]}"])
    again = ctl(root, "epilog", "--config", config, env=env)
    assert again.stdout == f"chjoin epilog: job {job} on n1: nothing left behind\n"
