"""Named containers under Slurm, as root and as the test user, through the SPANK plugin
(`srun --chjoin-name=NAME [--chjoin-image=IMG]`) and the command line (`srun chjoin --name`):
one build per node per name for the whole job (a later step sees the -W changes and binds of
the first), ten parallel `srun --overlap` attaches, an interactive `--pty` attach by name
driven through a pseudo-terminal, a mismatching attach in one line per node, and nothing left
when the job ends or is cancelled mid-step (no holder, no record, no process in a container)."""

import os
import re
import select
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import HOST_BINDS
from cluster import cluster, sbatch, submit, wait_for, wait_job  # noqa: F401
from test_spank import errors, leftovers, spank  # noqa: F401

LAYOUTS = [pytest.param((["-N1", "-n2"], 1), id="one-node"),
           pytest.param((["-N3", "--ntasks-per-node=1"], 3), id="three-nodes",
                        marks=pytest.mark.nodes(3))]
SAY = 'echo "{step} $(hostname) $(cat /made 2>&1) $(cat /mnt/marker 2>&1) ' \
      '$(readlink /proc/self/ns/user) $(readlink /proc/self/ns/mnt)"'


def workdir():
    base = Path(tempfile.mkdtemp(prefix="chjoin-named-", dir="/tmp"))
    base.chmod(0o1777)
    (base / "marker").write_text("bound-by-step-1\n")
    (base / "marker").chmod(0o644)
    return base


def step(how, chjoin, name, command, image=None, args="", options=""):
    """One srun line of a job script, through the plugin or chjoin's command line."""
    if how == "plugin":
        return (f"srun {options} --chjoin-name={name}" +
                (f" --chjoin-image={image}" if image else "") +
                (f" --chjoin-args={shlex.quote(args)}" if args else "") +
                f" sh -c {shlex.quote(command)}")
    return (f"srun {options} {chjoin} --name={name} {args} {image or ''} -- "
            f"sh -c {shlex.quote(command)}")


def nothing_left(cluster, as_user):
    """No named container of the test user on any node: no holder or other process in a
    container, no record or semaphore in any node's /dev/shm."""
    cluster.idle()
    deadline = time.monotonic() + 10
    while True:
        left = leftovers(as_user.uid) + [f"{node}: /dev/shm/{n}" for node, names in
                                         cluster.shm().items() for n in names
                                         if n.startswith((f"chjoin-{as_user.uid}-",
                                                          f"sem.chjoin-{as_user.uid}-"))]
        if not left:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"left behind: {left}")
        time.sleep(0.2)


@pytest.mark.parametrize("how", ["plugin", "cli"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_three_steps_one_build_per_node_then_ten_parallel_attaches(
        cluster, spank, as_user, image, how, layout, request):
    """Step 1 creates NAME with -W and a bind and writes /made; step 2 attaches and reads it;
    then ten `srun --overlap` steps attach at once. On each node every line names one
    container; the job's end (the epilog) leaves nothing. Through the command line, step 1 also
    installs a local .deb with apt-get under --seccomp as uid 0 in a Debian image of this host
    (the plugin refuses --seccomp), and every later step sees the package installed."""
    options, nodes = layout
    base = workdir()
    say, args, install = SAY, f"-W -b {base}:/mnt", ""
    if how == "cli":
        image, debs = request.getfixturevalue("debian_image")
        shutil.copy(debs / "test.deb", base / "test.deb")
        (base / "test.deb").chmod(0o644)
        args = " ".join(["-W", "--seccomp", "-u", "0", "-g", "0", *HOST_BINDS, args[3:]])
        install = ('[ "$SLURM_LOCALID" != 0 ] || apt-get install -y /mnt/test.deb '
                   "|| echo apt-failed; ")      # one install per container
        say += (" \"$(dpkg-query -W -f='${{Status}}' chjoin-seccomp-test 2>&1)"
                ' $(cat /srv/chjoin-test/hello 2>&1)"')
    script = "\n".join([
        step(how, as_user.chjoin, "build", install + "echo made-on-$(hostname) > /made; " +
             SAY.format(step="S1"), image=image, args=args),
        step(how, as_user.chjoin, "build", say.format(step="S2")),
        *[step(how, as_user.chjoin, "build", say.format(step=f"S3.{i}"),
               options="--overlap") + " &" for i in range(10)],
        "wait", ""])
    try:
        job_id, out = sbatch(as_user, script, options)
        wait_job(job_id, 180)
        text = out.read_text()
        lines = [line.split() for line in text.splitlines() if re.match(r"S[123]", line)]
        per_node = {}
        for words in lines:
            assert words[2] == f"made-on-{words[1]}" and words[3] == "bound-by-step-1", text
            if how == "cli" and not words[0].startswith("S1"):
                assert words[6:] == ["install", "ok", "installed", "hello"], text
            per_node.setdefault(words[1], set()).add((words[4], words[5]))
        assert len(per_node) == nodes, text
        assert all(len(c) == 1 for c in per_node.values()), per_node     # one build per node
        assert len({c for cs in per_node.values() for c in cs}) == nodes
        tasks = 2 if nodes == 1 else 1
        assert len(lines) == 12 * nodes * tasks, text
        assert errors(text) == [], text
        if how == "cli":
            assert text.count("Setting up chjoin-seccomp-test (1.0)") == nodes, text
        nothing_left(cluster, as_user)
    finally:
        subprocess.run(["rm", "-rf", str(base)])


def test_an_attach_with_another_image_is_one_line_exit_31_and_exec_needs_one_running(
        cluster, spank, as_user, image):
    script = "\n".join([
        f"srun --chjoin-name=nx:exec true; echo rc-exec=$?",
        f"srun --chjoin-name=nx --chjoin-image={image} true",
        f"srun --chjoin-name=nx --chjoin-image=/tmp true; echo rc-other=$?",
        f"srun --chjoin-name=nx:create --chjoin-image={image} true; echo rc-create=$?",
        "srun --chjoin-name=nx --chjoin-image=none sh -c 'echo host-$(readlink "
        "/proc/self/ns/user)'", ""])
    job_id, out = sbatch(as_user, script, ["-N1", "-n1"])
    wait_job(job_id)
    text = out.read_text()
    assert "rc-exec=31" in text and "rc-other=31" in text and "rc-create=31" in text, text
    assert "host-user:[4026531837]" in text, text       # --chjoin-image=none opts out
    lines = errors(text)
    assert len(lines) == 3, text
    assert lines[0].endswith('--name nx: "exec": no container of that name is running '
                             f"(in job {job_id} on this node)")
    assert lines[1].endswith(f"--name nx: the container has image {image}, this rank /tmp")
    assert re.search(r'--name nx: "create": a container of that name exists already '
                     r"\(created by pid \d+\)$", lines[2])
    nothing_left(cluster, as_user)


def test_an_interactive_attach_by_name_sees_the_first_steps_binds(cluster, spank, as_user,
                                                                   image):
    """`srun --overlap --jobid J --chjoin-name=NAME --pty sh` while step 1 runs, typed into a
    pseudo-terminal: the shell is in step 1's container, with its bind and its -W file."""
    base = workdir()
    try:
        job_id, out = sbatch(as_user, step(
            "plugin", None, "dbg", "echo made-on-$(hostname) > /made; " +
            SAY.format(step="S1") + "; sleep 60", image=image, args=f"-W -b {base}:/mnt") +
            "\n", ["-N1", "-n1"])
        wait_for(lambda: out.exists() and "S1" in out.read_text(), 30, "step 1")
        first = next(line for line in out.read_text().splitlines() if line.startswith("S1"))
        controller, terminal = os.openpty()
        shell = subprocess.Popen(
            ["srun", "--overlap", f"--jobid={job_id}", "--chjoin-name=dbg", "--pty", "sh"],
            stdin=terminal, stdout=terminal, stderr=terminal, env=as_user.env(),
            cwd="/tmp", start_new_session=True, **as_user.identity_kwargs())
        os.close(terminal)
        os.write(controller, (SAY.format(step="PTY") + "; exit\n").encode())
        seen = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and shell.poll() is None:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(controller, 4096)
                except OSError:
                    break
        shell.wait(10)
        os.close(controller)
        text = seen.decode(errors="replace").replace("\r", "")
        said = [line for line in text.splitlines() if line.startswith("PTY ")]
        assert said, text
        assert said[-1].split()[1:] == first.split()[1:], text
        subprocess.run(["scancel", job_id], check=True)
        wait_job(job_id)
        nothing_left(cluster, as_user)
    finally:
        subprocess.run(["rm", "-rf", str(base)])


@pytest.mark.parametrize("how", ["plugin", "cli"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_job_cancelled_mid_step_leaves_nothing(cluster, spank, as_user, image, how, layout):
    options, nodes = layout
    job_id, out = sbatch(as_user, step(how, as_user.chjoin, "cx", SAY.format(step="S1") +
                                       "; sleep 60", image=image, args="-W") + "\n", options)
    tasks = 2 if nodes == 1 else 1
    wait_for(lambda: out.exists() and out.read_text().count("S1") >= nodes * tasks, 30,
             "every task to start")
    subprocess.run(["scancel", job_id], check=True)
    wait_job(job_id)
    nothing_left(cluster, as_user)
