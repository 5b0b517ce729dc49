"""The SPANK plugin: `srun --chjoin-image=IMAGE [--chjoin-args="OPTIONS"]` on the real cluster,
as root and as the test user. One container per node per step, built by one builder; tasks that
see what `srun chjoin --join` gives them (ids, cwd, no_new_privs, mounts, the environment, task
by task); every error with chjoin's exit code and one line per node; batch scripts and salloc
shells on the host; nothing left after a normal end, scancel (during the build or the tasks) or
a SIGKILLed task."""

import contextlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster import cluster, needs_nodes, sbatch, submit, wait_for, wait_job  # noqa: F401
from conftest import HOST_BINDS
from test_mpi import OPEN_MPI, assert_allreduce, program  # noqa: F401

PLUGSTACK = Path("/etc/slurm/plugstack.conf.d/chjoin.conf")
ASAN_PLUGSTACK = Path("/run/chjoin-slurm/plugstack-asan.conf")   # CHJOIN_SLURM_ASAN=1 ci/slurm-up
HOST_USER_NS = "user:[4026531837]"
SHOW = ["sh", "-c", 'echo "$(hostname) $SLURM_STEP_ID $SLURM_PROCID '
        '$(readlink /proc/self/ns/user) $(readlink /proc/self/ns/mnt)"']
# Each test that takes `layout` runs on one node (ci/test's single-node pass) and, marked
# `nodes`, on three (its netns pass): (srun/salloc options, nodes).
LAYOUTS = [pytest.param((["-N1", "-n4"], 1), id="one-node"),
           pytest.param((["-N3", "-n7", "--exclusive"], 3), id="three-nodes",
                        marks=pytest.mark.nodes(3))]
SHOW_AND_WAIT = [*SHOW[:2], SHOW[2] + "; sleep 2"]   # steps that overlap: distinct namespaces

# What each task reports, for the comparison with `srun chjoin --join` (busybox sh in the image).
REPORT = r"""r=$SLURM_PROCID
echo "R $r ids $(id -u):$(id -g):$(id -G)"
echo "R $r cwd $(pwd)"
echo "R $r nnp $(grep NoNewPrivs /proc/self/status | tr -d '\t ')"
echo "R $r hostns $([ "$(readlink /proc/self/ns/user)" = "user:[4026531837]" ] && echo yes || echo no)"
awk -v r=$r '{for (i = 7; $i != "-"; i++); print "R", r, "mnt", $5, $6, $(i+1), $(i+2)}' /proc/self/mountinfo
env | sort | sed "s/^/R $r env /"
"""
# Variables that differ between any two steps of a job (ports, pids, the step), and the
# plugin's own options, which srun passes to the tasks of its steps.
PER_STEP = re.compile(r"SLURM_(STEP_ID|STEPID|TASK_PID|STEP_LAUNCHER_PORT|SRUN_COMM_PORT|"
                      r"SPANK_.*)=")


@pytest.fixture(scope="session")
def spank(cluster):
    if not PLUGSTACK.exists():
        pytest.fail(f"{PLUGSTACK} missing: ci/install builds the plugin, ci/slurm-up configures it")
    return PLUGSTACK.read_text()


@contextlib.contextmanager
def plugstack_timeout(seconds):
    """The plugstack line with timeout=SECONDS for the duration (srun and slurmstepd read it at
    each start; slurmstepd reads the ASan cluster's own plugstack)."""
    files = [f for f in (PLUGSTACK, ASAN_PLUGSTACK) if f.exists()]
    lines = [f.read_text() for f in files]
    for f, line in zip(files, lines):
        f.write_text(re.sub(r"timeout=\d+", f"timeout={seconds}", line))
    try:
        yield
    finally:
        for f, line in zip(files, lines):
            f.write_text(line)


def containers(stdout):
    """{host: {(step, user ns, mnt ns): tasks}} from the lines SHOW prints."""
    found = {}
    for line in stdout.splitlines():
        if line.startswith("srun: ") or not line.strip():
            continue
        host, step, _rank, user, mnt = line.split()
        found.setdefault(host, {}).setdefault((step, user, mnt), 0)
        found[host][(step, user, mnt)] += 1
    return found


def errors(stderr):
    return [line for line in stderr.splitlines() if re.match(r"chjoin\[\d+\]: error: ", line)]


def leftovers(uid, namespaces=()):
    """What outlived a job: live processes of `uid` started by Slurm (SLURM_JOB_ID in their
    environment: other sessions on this machine run containers too) in a user namespace other
    than the host's, builders, and descriptors anywhere that name one of `namespaces`
    ("user:[N]", "mnt:[N]")."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            user_ns = os.readlink(f"/proc/{entry}/ns/user")
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields["State"].startswith("Z"):
            continue
        if "chjoin-spank-build" in argv:
            found.append(f"builder {entry}: {argv}")
        elif int(fields["Uid"].split()[0]) == uid and user_ns != HOST_USER_NS and \
                started_by_slurm(entry):
            found.append(f"process {entry} in {user_ns}: {argv}")
        if namespaces:
            try:
                fds = os.listdir(f"/proc/{entry}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"/proc/{entry}/fd/{fd}")
                except OSError:
                    continue
                if target in namespaces:
                    found.append(f"fd {fd} of {entry} ({fields['Name'].strip()}): {target}")
    return found


def started_by_slurm(pid):
    try:
        return b"\0SLURM_JOB_ID=" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def assert_nothing_left(cluster, as_user, namespaces=()):
    cluster.idle()
    left = []
    for _ in range(30):                # processes of a job still ending
        left = leftovers(as_user.uid, namespaces)
        if not left:
            return
        time.sleep(0.2)
    pytest.fail(f"left behind: {left}")


def srun(as_user, image, *argv, args=None, options=(), env=None, timeout=120):
    extra = [f"--chjoin-args={args}"] if args is not None else []
    return submit(as_user, ["srun", *options, f"--chjoin-image={image}", *extra, *argv],
                  env=env, timeout=timeout)


# --- one container per node per step -------------------------------------------------------

def test_the_tasks_of_a_step_share_one_container(cluster, spank, as_user, image):
    done = srun(as_user, image, *SHOW, options=["-N1", "-n8"])
    assert done.returncode == 0, done.stderr
    [(_host, found)] = containers(done.stdout).items()
    [((_step, user, _mnt), tasks)] = found.items()
    assert tasks == 8 and user != HOST_USER_NS
    assert errors(done.stderr) == []
    assert_nothing_left(cluster, as_user, [user, _mnt])


@needs_nodes(3)
def test_uneven_layout_gets_one_container_per_node(cluster, spank, as_user, image):
    done = srun(as_user, image, *SHOW, options=["-N3", "-n7", "--exclusive"])
    assert done.returncode == 0, done.stderr
    found = containers(done.stdout)
    assert {host: list(c.values()) for host, c in found.items()} == \
        {"c1": [3], "c2": [2], "c3": [2]}
    namespaces = {key for c in found.values() for key in c}
    assert len(namespaces) == 3
    assert_nothing_left(cluster, as_user, [n for _s, u, m in namespaces for n in (u, m)])


def test_image_none_runs_on_the_host(cluster, spank, as_user, image):
    done = srun(as_user, "none", *SHOW, options=["-n2"])
    assert done.returncode == 0, done.stderr
    assert {user for c in containers(done.stdout).values() for _s, user, _m in c} == \
        {HOST_USER_NS}


# --- the same container as `srun chjoin --join` ----------------------------------------------

def reports(text):
    """{task: sorted report lines, minus what differs between any two steps}."""
    tasks = {}
    for line in text.splitlines():
        if line.startswith("R "):
            _r, task, rest = line.split(" ", 2)
            if not PER_STEP.match(rest.partition(" ")[2]):
                tasks.setdefault(int(task), []).append(rest)
    return {task: sorted(lines) for task, lines in tasks.items()}


@pytest.mark.parametrize("args", [
    "",
    "-W -c /tmp --set-env=A=1 --set-env='B=x:$SLURM_PROCID:$NOPE:$' --set-env "
    "--unset-env='SLURM_CPU*' --unset-env='!(PATH|HOME|A|B|FROM_IMAGE|SLURM_*|TMPDIR)'",
    "-u 0 -g 0 --home -t -b /etc:/opt --env-no-expand --set-env=C=$HOME",
], ids=["defaults", "environment", "ids-home-tmp"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_tasks_see_what_srun_chjoin_join_gives_them(cluster, spank, as_user, image, args,
                                                    layout):
    """One job, two steps with the same options: the plugin's, then chjoin's. Each task reports
    its ids, cwd, no_new_privs, mounts and whole environment; task by task, they are equal,
    but for what differs between any two steps and TMPDIR (slurmstepd sets it on task 0 when
    unset; the plugin says TMPDIR=/tmp in every task, chjoin unsets it)."""
    base = Path(tempfile.mkdtemp(prefix="chjoin-spank-eq-", dir="/tmp"))
    base.chmod(0o1777)
    (base / "report.sh").write_text(REPORT)
    (base / "report.sh").chmod(0o644)
    args = f"-b {base}:/mnt {args}"
    quoted = args.replace("'", "'\\''")
    script = (f"srun --chjoin-image={image} --chjoin-args='{quoted}' sh /mnt/report.sh "
              f">{base}/plugin 2>&1\n"
              f"srun {as_user.chjoin} --join {shlex.join(shlex.split(args))} {image} -- "
              "sh /mnt/report.sh "
              f">{base}/chjoin 2>&1\n")
    (base / "job.sh").write_text("#!/bin/sh\n" + script)
    (base / "job.sh").chmod(0o755)
    options, _nodes = layout
    done = submit(as_user, ["salloc", *options, "sh", str(base / "job.sh")])
    assert done.returncode == 0, done.stderr
    plugin = reports((base / "plugin").read_text())
    chjoin = reports((base / "chjoin").read_text())
    tasks = list(range(int(options[1][2:])))
    assert sorted(plugin) == tasks, (base / "plugin").read_text()
    assert sorted(chjoin) == tasks, (base / "chjoin").read_text()
    for task in plugin:
        assert "env TMPDIR=/tmp" in plugin[task]
        assert [x for x in plugin[task] if x != "env TMPDIR=/tmp"] == chjoin[task]
        assert "hostns no" in plugin[task] and "nnp NoNewPrivs:1" in plugin[task]
    subprocess.run(["rm", "-rf", str(base)])


# --- errors: chjoin's exit code, one line per node, no task on the host ---------------------

@pytest.mark.parametrize("image_ref, args, code, message", [
    ("/nonexistent", "", 31, "can't stat: /nonexistent: No such file or directory"),
    (None, "--join", 64, "--chjoin-args: --join: the plugin already shares one container"),
    (None, "--join-ct=2", 64, "--chjoin-args: --join-ct: the plugin already shares"),
    (None, "-b 'unclosed", 64, "--chjoin-args: unclosed '"),
    (None, "--no-such-option", 64, "unknown option: --no-such-option"),
    (None, "-b /nonexistent", 31, "can't bind: source not found: /nonexistent"),
    (None, "stray", 64, "--chjoin-args: not an option: stray"),
    (None, "--unset-env='!(A'", 31, "--unset-env: unbalanced parenthesis"),
    (None, "-W --seccomp", 64, "--chjoin-args: --seccomp: not under the SPANK plugin"),
], ids=["image", "join", "join-ct", "quote", "option", "bind", "stray", "glob", "seccomp"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_failed_build_fails_every_task_with_one_line_per_node(
        cluster, spank, as_user, image, image_ref, args, code, message, layout):
    options, nodes = layout
    done = srun(as_user, image_ref or image, *SHOW, args=args, options=options)
    assert done.returncode == code, done.stderr
    assert done.stdout == "", "a task ran"
    lines = errors(done.stderr)
    assert len(lines) == nodes and all(message in line for line in lines), done.stderr
    assert f"Exited with exit code {code}" in done.stderr
    assert_nothing_left(cluster, as_user)


def test_a_missing_command_exits_49_in_every_task(cluster, spank, as_user, image):
    done = srun(as_user, image, "no-such-command", options=["-n3"])
    assert done.returncode == 49, done.stderr
    lines = errors(done.stderr)
    assert lines and all("can't exec: no-such-command: No such file or directory" in line
                         for line in lines)
    assert len(lines) == 3
    # a host command the image lacks is missing too: the lookup is the container's
    done = srun(as_user, image, "/usr/bin/python3", "-c", "pass", options=["-n1"])
    assert done.returncode == 49, done.stderr


def test_a_build_longer_than_the_timeout_fails_every_task(cluster, spank, as_user, image):
    """The builder stops itself (CHJOIN_TEST_STOP) and never finishes: at the plugstack's
    timeout= it is killed, and each task fails with one line per node."""
    with plugstack_timeout(2):
        started = time.monotonic()
        done = srun(as_user, image, *SHOW, options=["-n2"],
                    env={"CHJOIN_TEST_STOP": "any:setup"})
        took = time.monotonic() - started
    assert done.returncode == 31, done.stderr
    lines = errors(done.stderr)
    assert len(lines) == 1 and "took longer than timeout=2 s" in lines[0], done.stderr
    assert took < 15
    assert_nothing_left(cluster, as_user)


# --- batch scripts and salloc shells stay on the host; each step its own container ----------

def skip_under_asan(cluster):
    """On the ASan cluster a batch script's srun reads slurmd's own slurm.conf (SLURM_CONF),
    so the ASan plugin, in a process without libasan: ASan refuses to start."""
    if cluster.shape[-1] == "asan":
        pytest.skip("srun inside a batch script can't load the ASan plugin (no libasan)")


def test_sbatch_steps_get_a_container_each_and_the_script_stays_on_the_host(
        cluster, spank, as_user, image):
    skip_under_asan(cluster)
    show = " ".join(f"'{word}'" for word in SHOW_AND_WAIT)
    script = (f"echo script $(readlink /proc/self/ns/user)\n"
              f"srun --overlap -n2 {show} &\nsrun --overlap -n2 {show} &\n"
              f"srun --overlap -n1 --chjoin-image=none {show} &\nwait\n")
    job_id, out = sbatch(as_user, script, ["-N1", "-n5", f"--chjoin-image={image}",
                                           "--chjoin-args=-c /tmp"])
    wait_job(job_id)
    text = out.read_text()
    assert f"script {HOST_USER_NS}" in text
    [(_host, found)] = containers("\n".join(l for l in text.splitlines()
                                            if not l.startswith("script"))).items()
    assert sorted(found.values()) == [1, 2, 2]
    users = {tasks: [user for (_s, user, _m), n in found.items() if n == tasks]
             for tasks in (1, 2)}
    assert users[1] == [HOST_USER_NS]          # the step with --chjoin-image=none
    assert len(set(users[2])) == 2 and HOST_USER_NS not in users[2]
    assert_nothing_left(cluster, as_user)


def test_salloc_shell_stays_on_the_host(cluster, spank, as_user, image):
    show = " ".join(f"'{word}'" for word in SHOW_AND_WAIT)
    done = submit(as_user, ["salloc", "-N1", "-n4", f"--chjoin-image={image}", "sh", "-c",
                            f"echo shell $(readlink /proc/self/ns/user); srun --overlap -n2 {show} & "
                            f"srun --overlap -n2 {show} & wait"])
    assert done.returncode == 0, done.stderr
    assert f"shell {HOST_USER_NS}" in done.stdout
    [(_host, found)] = containers("\n".join(l for l in done.stdout.splitlines()
                                            if not l.startswith("shell"))).items()
    assert sorted(found.values()) == [2, 2]
    assert len({user for _s, user, _m in found}) == 2
    assert HOST_USER_NS not in {user for _s, user, _m in found}


# --- nothing left ----------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_scancel_during_the_tasks_leaves_nothing(cluster, spank, as_user, image, layout):
    nodes = layout[1]
    job_id, out = sbatch(as_user, f"srun --chjoin-image={image} sh -c "
                                  "'readlink /proc/self/ns/user; readlink /proc/self/ns/mnt; "
                                  "sleep 60'\n", [f"-N{nodes}", "--ntasks-per-node=2"])
    wait_for(lambda: out.exists() and len(out.read_text().split()) >= 4 * nodes, 30,
             "every task to start")
    namespaces = set(out.read_text().split())
    subprocess.run(["scancel", job_id], check=True)
    wait_job(job_id)
    assert_nothing_left(cluster, as_user, namespaces)


def test_scancel_during_the_build_leaves_nothing(cluster, spank, as_user, image):
    """scancel can't interrupt slurm_spank_user_init: the step ends when the build times out."""
    skip_under_asan(cluster)
    with plugstack_timeout(4):
        job_id, _out = sbatch(as_user, f"srun --chjoin-image={image} sleep 60\n", ["-n2"],
                              env={"CHJOIN_TEST_STOP": "any:setup"})
        wait_for(lambda: leftovers(as_user.uid), 30, "the builder to start")
        subprocess.run(["scancel", job_id], check=True)
        wait_job(job_id)
    assert_nothing_left(cluster, as_user)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_sigkilled_task_leaves_nothing(cluster, spank, as_user, image, layout):
    done = srun(as_user, image, "sh", "-c",
                'readlink /proc/self/ns/user; readlink /proc/self/ns/mnt; '
                '[ "$SLURM_PROCID" = 0 ] && kill -9 $$; sleep 1', options=layout[0])
    assert done.returncode == 137 or "Killed" in done.stderr, done.stderr
    assert_nothing_left(cluster, as_user, set(done.stdout.split()))


# --- MPI --------------------------------------------------------------------------------------

@pytest.mark.parametrize("nodes", [pytest.param(1, id="one-node"),
                                   pytest.param(3, id="three-nodes", marks=pytest.mark.nodes(3))])
def test_srun_pmix_open_mpi_allreduce(cluster, spank, as_user, host_image, program, nodes):
    layout_args, layout = (["-N3", "-n7", "--exclusive"], [3, 2, 2]) if nodes == 3 else \
        (["-N1", "-n4"], [4])
    args = " ".join(HOST_BINDS)
    done = submit(as_user, ["srun", "--mpi=pmix", *layout_args, f"--chjoin-image={host_image}",
                            f"--chjoin-args={args}", sys.executable, str(program)],
                  env=OPEN_MPI)
    assert_allreduce(done, sum(layout), layout)


def test_quiet_hides_the_tasks_stdout_as_chjoin_does(cluster, spank, as_user, image):
    done = srun(as_user, image, "sh", "-c", "echo out; echo err >&2", args="-q",
                options=["-n2"])
    assert done.returncode == 0, done.stderr
    assert "out" not in done.stdout and done.stderr.count("err") == 2


@needs_nodes(3)
def test_a_squashfs_image_through_the_plugin_one_daemon_per_node(cluster, spank, as_user,
                                                                  squash_dir):
    """srun -N3 -n7 --chjoin-image=IMG.sqfs: each node's builder mounts the image once (one
    squashfuse_ll outside the container); every task's / is that FUSE mount; once the step has
    ended no daemon is left on any node: it ends with the container's last task."""
    from test_srun import squashfs_daemons

    image = squash_dir / "img.sqfs"
    show = ["sh", "-c", 'echo "$(hostname) $(stat -c %d /) $(readlink /proc/self/ns/mnt) '
            '$(grep -c " / / .* - fuse.squashfuse_ll " /proc/self/mountinfo)"']
    done = srun(as_user, image, *show, options=["-N3", "-n7", "--exclusive"])
    assert done.returncode == 0, done.stderr
    seen = {}
    for line in done.stdout.splitlines():
        host, device, mnt, fuse_root = line.split()
        assert fuse_root == "1", line
        seen.setdefault(host, set()).add((device, mnt))
    assert {host: len(c) for host, c in seen.items()} == {"c1": 1, "c2": 1, "c3": 1}, seen
    deadline = time.monotonic() + 5
    while squashfs_daemons(cluster, image) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert squashfs_daemons(cluster, image) == {}
    assert_nothing_left(cluster, as_user)


# --- under AddressSanitizer (CHJOIN_SLURM_ASAN=1 ci/slurm-up) -----------------------------------

ASAN_LOG = Path("/var/log/slurm/asan")


def sanitizer_reports():
    """What AddressSanitizer and UBSan wrote from any slurmstepd or task (the ASan cluster)."""
    return sorted(str(p) for p in ASAN_LOG.glob("*")) if ASAN_LOG.is_dir() else []


def test_under_asan_slurmstepd_runs_the_sanitized_plugin(cluster, spank, as_user, image):
    """On the ASan cluster, a step's slurmstepd maps libasan and chjoin_spank-asan.so: the
    other tests of this file (and tests/security) really ran the sanitized build."""
    if cluster.shape[-1] != "asan":
        pytest.skip("not an ASan cluster (CHJOIN_SLURM_ASAN=1 ci/slurm-up)")
    step = subprocess.Popen(["srun", "-n1", f"--chjoin-image={image}", "sleep", "3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp",
                            env=as_user.env(), **as_user.identity_kwargs())

    def sanitized_stepd():
        for entry in os.listdir("/proc"):
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() != "slurmstepd":
                    continue
                maps = Path(f"/proc/{entry}/maps").read_text()
            except OSError:
                continue
            if "chjoin_spank-asan.so" in maps and "libasan.so" in maps:
                return entry
        return None

    try:
        assert wait_for(sanitized_stepd, 20, "a slurmstepd mapping the ASan plugin")
    finally:
        step.wait(timeout=60)
    assert step.returncode == 0


def test_zz_no_sanitizer_report(cluster):
    """Last in this file: neither ASan nor UBSan reported anything from the plugin."""
    assert sanitizer_reports() == []
