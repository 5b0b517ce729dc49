"""Named containers, `chjoin --name=NAME[:auto|create|exec]`, outside Slurm, as root and as the
test user: a container whose holder stays, entered by later launches (its -W changes and binds
there, each rank's environment its own), every mismatch one line and exit 31, `--keep`, a
SIGKILLed holder, parallel attaches; `chjoinctl ps`, `stop` and `save`; nothing left after."""

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import build_busybox_image, wait_for, world_readable_dir

NS = 'echo "$(readlink /proc/self/ns/user) $(readlink /proc/self/ns/mnt)"'


def ctl(runner, *args, timeout=60):
    return subprocess.run([str(Path(runner.chjoin).parent / "chjoinctl"), *map(str, args)],
                          capture_output=True, text=True, env=runner.env(), cwd="/",
                          timeout=timeout, **runner.identity_kwargs())


def names_of(runner):
    done = ctl(runner, "ps", "--json")
    assert done.returncode == 0, done.stderr
    return {n["name"]: n for n in json.loads(done.stdout)["names"]}


def errors(stderr):
    return [line for line in stderr.splitlines() if re.match(r"chjoin\[\d+\]: error: ", line)]


def holders(uid):
    """Live chjoin-holder processes of `uid`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        if comm == "chjoin-holder" and int(uid_line.split()[1]) == uid and \
                "\nState:\tZ" not in status:
            found.append(int(entry))
    return found


def shm_of(name, job=""):
    """The /dev/shm records (and their semaphores) of named container `name` (of `job`; "":
    outside Slurm), found by the tag stored in each record: their names are keyed digests."""
    from chjoin import record

    tag = record.stored_tag(f"name.{job}.{name}")
    found = []
    for entry in sorted(os.listdir("/dev/shm")):
        if not entry.startswith("chjoin-"):
            continue
        try:
            with open(f"/dev/shm/{entry}", "rb") as f:
                stored, _ = record.parse(f.read(record.SIZE + 1))
        except (OSError, record.Corrupt):
            continue
        if stored == tag:
            found += [entry] + [f"sem.{entry}"] * os.path.lexists(f"/dev/shm/sem.{entry}")
    return found


@pytest.fixture
def name(as_user, request):
    """A name of this test's own; whatever it left is stopped after, and then nothing of it
    may be left: no record, no semaphore, no holder."""
    chosen = f"t{os.getpid()}-{request.node.name[5:30].strip('_')}-{as_user.who}"
    chosen = re.sub(r"[^A-Za-z0-9_.-]", "_", chosen)
    yield chosen
    if chosen in names_of(as_user):
        ctl(as_user, "stop", chosen, "--job", "none")
    assert shm_of(chosen) == []
    assert holders(as_user.uid) == []


def test_create_keeps_the_container_and_an_attach_sees_its_W_changes_and_binds(
        as_user, image, host_dir, name):
    first = as_user.run(f"--name={name}", "-W", "-b", f"{host_dir}:/mnt", image, "--", "sh",
                        "-c", f"echo changed > /newfile; {NS}")
    assert first.returncode == 0, first.stderr
    assert holders(as_user.uid), "no holder keeps the named container"
    again = as_user.run(f"--name={name}", "--", "sh", "-c",
                        f"cat /newfile /mnt/file; {NS}")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["changed", "from the host", first.stdout.strip()]
    # exec with the same image, and auto with it: the same container
    for flag in (":exec", ""):
        same = as_user.run(f"--name={name}{flag}", image, "--", "cat", "/newfile")
        assert (same.returncode, same.stdout, same.stderr) == (0, "changed\n", "")


def test_an_attach_builds_its_environment_as_a_new_rank_would(as_user, image, name):
    first = as_user.run(f"--name={name}", "--set-env=ONLY_FIRST=1", "-c", "/etc", image, "--",
                        "true")
    assert first.returncode == 0, first.stderr
    done = as_user.run(f"--name={name}", "--set-env", "--set-env=MINE=2", "--unset-env=HOME",
                       "-c", "/bin", "--", "sh", "-c",
                       'echo "$FROM_IMAGE ${ONLY_FIRST:-unset} $MINE ${HOME:-nohome} $PWD '
                       '$(pwd) $CH_RUNNING"', env={"FROM_HOST": "h"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "yes unset 2 nohome /bin /bin Weird Al Yankovic\n"


@pytest.mark.parametrize("option, words", [
    ("image", "image {image}, this rank {other}"),
    ("-w", "write mode -W 12%, this rank -w"),
    ("-b", "mount options -b {dir}:/mnt, this rank -b /tmp:/mnt"),
    ("-u", "uid:gid {ids}, this rank 0:{gid}"),
])
def test_an_attach_whose_options_differ_is_one_line_naming_the_difference(
        as_user, image, host_dir, name, option, words):
    first = as_user.run(f"--name={name}", "-W", "-b", f"{host_dir}:/mnt", image, "--", "true")
    assert first.returncode == 0, first.stderr
    other = world_readable_dir("chjoin-other-")
    build_busybox_image(other / "img")
    try:
        args = {"image": [other / "img"], "-w": ["-w"], "-b": ["-b", "/tmp:/mnt"],
                "-u": ["-u", "0"]}[option]
        done = as_user.run(f"--name={name}", *args, *(() if option == "image" else ("--",)),
                           "true")
    finally:
        subprocess.run(["rm", "-rf", str(other)])
    expected = words.format(image=image, other=other / "img", dir=host_dir,
                            ids=f"{as_user.uid}:{as_user.gid}", gid=as_user.gid)
    if option == "-u" and as_user.uid == 0:
        expected = "uid:gid 0:0, this rank 0:0"
    if expected.endswith("0:0, this rank 0:0"):      # root is already 0: the same container
        assert done.returncode == 0, done.stderr
        return
    assert errors(done.stderr) == [
        f"chjoin[{errors(done.stderr)[0][7:].split(']')[0]}]: error: --name {name}: the "
        f"container has {expected}"], done.stderr
    assert done.returncode == 31


def test_exec_when_nothing_runs_and_auto_without_an_image_fail_in_one_line(as_user, image,
                                                                           name):
    done = as_user.run(f"--name={name}:exec", "--", "true")
    assert done.returncode == 31
    [line] = errors(done.stderr)
    assert line.endswith(f'--name {name}: "exec": no container of that name is running '
                         "(of yours on this node)")
    done = as_user.run(f"--name={name}", "--", "true")
    assert done.returncode == 31
    [line] = errors(done.stderr)
    assert line.endswith("and no IMAGE was given to create it")
    assert shm_of(name) == []
    bad = as_user.run(f"--name={name}:run", image, "--", "true")
    assert bad.returncode == 31 and errors(bad.stderr)[0].endswith(
        "--name: flag must be \"auto\", \"create\" or \"exec\", not 'run'")


def test_create_when_it_exists_fails_in_one_line(as_user, image, name):
    assert as_user.run(f"--name={name}:create", image, "--", "true").returncode == 0
    done = as_user.run(f"--name={name}:create", image, "--", "true")
    assert done.returncode == 31
    [line] = errors(done.stderr)
    assert re.search(rf'--name {name}: "create": a container of that name exists already '
                     r"\(created by pid \d+\)$", line)


def test_keep_ends_the_container_that_long_after_its_last_process(as_user, image, name):
    first = as_user.run(f"--name={name}", "--keep=1", "-W", image, "--", "true")
    assert first.returncode == 0, first.stderr
    # a process inside keeps it past --keep
    sleeper = subprocess.Popen([as_user.chjoin, f"--name={name}", "--", "sleep", "2.5"],
                               env=as_user.env(), cwd="/", **as_user.identity_kwargs())
    time.sleep(2)
    assert shm_of(name) and holders(as_user.uid)
    assert sleeper.wait(10) == 0
    started = time.monotonic()
    wait_for(lambda: not shm_of(name) and not holders(as_user.uid), 10, "the --keep expiry")
    assert 0.5 < time.monotonic() - started < 4
    done = as_user.run(f"--name={name}:exec", "--", "true")
    assert done.returncode == 31 and "no container of that name is running" in done.stderr


def test_short_attaches_each_start_keeps_count_again(as_user, image, name):
    """Attaches that end long before the holder's once-a-second look inside still count as the
    container's use: four `true`s 1.5 s apart keep a --keep=3 container, the same one, alive."""
    first = as_user.run(f"--name={name}", "--keep=3", image, "--", "readlink", "/proc/self/ns/mnt")
    assert first.returncode == 0, first.stderr
    for _ in range(4):
        time.sleep(1.5)
        assert as_user.run(f"--name={name}:exec", "--", "true").returncode == 0
    again = as_user.run(f"--name={name}:exec", "--", "readlink", "/proc/self/ns/mnt")
    assert (again.returncode, again.stdout) == (0, first.stdout), again.stderr
    wait_for(lambda: not shm_of(name) and not holders(as_user.uid), 10, "the --keep expiry")


def test_a_holder_sigtermed_as_it_starts_withdraws_the_name(as_user, image, name):
    """SIGTERM reaches the named holder just after its fork, before it has a handler (it stops
    itself there): it still ends the container and withdraws the name, rather than die and
    leave a READY record with nobody in it."""
    done = as_user.run(f"--name={name}", image, "--", "true",
                       env={"CHJOIN_TEST_STOP": "holder:forked"})
    assert done.returncode == 0, done.stderr
    [holder] = wait_for(lambda: holders(as_user.uid), 10, "the holder")
    wait_for(lambda: "\nState:\tT" in Path(f"/proc/{holder}/status").read_text(), 10,
             "the holder to stop itself")
    os.kill(holder, 15)
    os.kill(holder, 18)
    wait_for(lambda: not holders(as_user.uid), 10, "the holder to end")
    assert not shm_of(name), "the name was left behind"
    again = as_user.run(f"--name={name}:exec", "--", "true")
    assert again.returncode == 31 and "no container of that name is running" in again.stderr


def test_a_sigkilled_holder_is_said_in_one_line_and_the_name_can_be_created_again(
        as_user, image, name):
    assert as_user.run(f"--name={name}", image, "--", "true").returncode == 0
    [holder] = holders(as_user.uid)
    os.kill(holder, 9)
    wait_for(lambda: not holders(as_user.uid), 5, "the holder's death")
    done = as_user.run(f"--name={name}", "--", "true")
    assert done.returncode == 31
    [line] = errors(done.stderr)
    assert line.endswith(f"--name {name}: the container's holder (pid {holder}) is gone, "
                         "killed: it can't be entered any more; the name is free again")
    again = as_user.run(f"--name={name}:create", image, "--", "true")
    assert again.returncode == 0, again.stderr


def run_at_once(runner, argvs):
    """Start each argv (chjoin's arguments) at once as `runner`; [(rc, stdout, stderr)]. Not
    tests/ranks.py: it kills what outlives the ranks, and a named container's holder does."""
    procs = [subprocess.Popen([runner.chjoin, *map(str, argv)], env=runner.env(), cwd="/",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              **runner.identity_kwargs()) for argv in argvs]
    outputs = [p.communicate(timeout=60) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def test_ranks_started_at_once_share_one_container_one_builds_it(as_user, image, name):
    """Four ranks of one launch (--join-ct, as a launcher's count) create it together, then
    ten launches attach at the same moment: one container, one holder, one build."""
    created = run_at_once(as_user, [[f"--name={name}:create", "--join-ct=4", "-v", image,
                                     "--", "sh", "-c", NS]] * 4)
    assert [rc for rc, _, _ in created] == [0] * 4, created
    assert len({out for _, out, _ in created}) == 1
    assert sum("name: created container" in err for _, _, err in created) == 1
    attached = run_at_once(as_user, [[f"--name={name}", "--", "sh", "-c", NS]] * 10)
    assert [rc for rc, _, _ in attached] == [0] * 10, attached
    assert {out for _, out, _ in attached} == {created[0][1]}
    assert len(holders(as_user.uid)) == 1


def test_chjoinctl_ps_shows_the_name_its_image_ranks_inside_and_memory(as_user, image, name):
    first = as_user.run(f"--name={name}", "-W", image, "--", "sh", "-c",
                        "dd if=/dev/urandom of=/data bs=1M count=2 2>/dev/null")
    assert first.returncode == 0, first.stderr
    sleeper = subprocess.Popen([as_user.chjoin, f"--name={name}", "--", "sleep", "30"],
                               env=as_user.env(), cwd="/", **as_user.identity_kwargs())
    try:
        entry = wait_for(lambda: names_of(as_user).get(name, {}).get("inside"), 10,
                         "the rank inside")
        entry = names_of(as_user)[name]
        assert (entry["job"], entry["uid"], entry["image"], entry["state"]) == (
            None, as_user.uid, str(image), "running")
        assert [p["comm"] for p in entry["processes"]] == ["sleep"]
        assert entry["tmpfs_kib"] >= 2048 and entry["holder_kib"] > 1024
        text = ctl(as_user, "ps").stdout
        line = next(line for line in text.splitlines() if line.startswith(name))
        assert line.split()[1:5] == ["-", str(as_user.uid), "running", line.split()[4]]
        assert line.split()[5] == "1" and line.endswith(str(image))
    finally:
        stop = ctl(as_user, "stop", name)
        assert sleeper.wait(10) == -15
    assert stop.returncode == 0, stop.stderr
    assert re.fullmatch(rf"stopped {name}: 1 process inside ended, holder pid \d+ gone\n",
                        stop.stdout)
    assert name not in names_of(as_user)


def test_chjoinctl_stop_of_an_unknown_name_says_so(as_user, name):
    done = ctl(as_user, "stop", name)
    assert done.returncode == 1
    assert done.stderr.strip() == f"Error: no container named {name} on this node"


def test_chjoinctl_save_packs_the_root_with_its_changes_and_the_image_runs(as_user, image,
                                                                          name):
    out = world_readable_dir("chjoin-save-")
    as_user.own(out)
    try:
        first = as_user.run(f"--name={name}", "-W", "-b", "/tmp:/mnt", image, "--", "sh", "-c",
                            "echo installed > /tool-file")
        assert first.returncode == 0, first.stderr
        saved = ctl(as_user, "save", name, out / "img.sqfs")
        assert saved.returncode == 0, saved.stderr
        assert saved.stdout.startswith(f"saved {name} to {out / 'img.sqfs'} (")
        assert [p.name for p in out.iterdir()] == ["img.sqfs"]
        run = as_user.run(out / "img.sqfs", "--", "sh", "-c",
                          "cat /tool-file /etc/image-file; ls -A /mnt | wc -l")
        assert (run.returncode, run.stdout) == (0, "installed\nfrom the image\n0\n"), run.stderr
        # refused: an existing file without --force, a directory even with it
        before = (out / "img.sqfs").stat()
        for args, words in (([out / "img.sqfs"], f"{out / 'img.sqfs'} exists (--force "
                                                 "replaces it)"),
                            ([out, "--force"], f"{out} is a directory")):
            done = ctl(as_user, "save", name, *args)
            assert done.returncode == 1 and words in done.stderr, done.stderr
        assert (out / "img.sqfs").stat().st_mtime == before.st_mtime
        forced = ctl(as_user, "save", name, out / "img.sqfs", "--force")
        assert forced.returncode == 0, forced.stderr
        assert [p.name for p in out.iterdir()] == ["img.sqfs"]
    finally:
        subprocess.run(["rm", "-rf", str(out)])


def test_the_spank_builder_creates_the_name_then_a_later_one_enters_it(as_user, image, name):
    """As the plugin runs it for `srun --chjoin-name`: the first builds (-W, a file written by
    its tasks would stay), the second, with no image, enters the same container."""
    from test_spank_builder import run_builder

    seen = []

    def take(pid):
        seen.append((os.readlink(f"/proc/{pid}/ns/user"), os.readlink(f"/proc/{pid}/ns/mnt")))
    rc, err, records = run_builder(as_user, image, "-W", take=take, name=name)
    assert (rc, records[-1]) == (0, ["R"]), err
    rc, err, records = run_builder(as_user, "", "--set-env=LATER=1", take=take, name=name)
    assert (rc, records[-1]) == (0, ["R"]), err
    assert ["X", "LATER", "1"] in records
    assert len(seen) == 2 and seen[0] == seen[1]
    assert name in names_of(as_user)
    rc, err, _ = run_builder(as_user, "", "-w", name=f"{name}:exec")
    assert rc == 31 and err.strip().endswith(
        f"--name {name}: the container has write mode -W 12%, this rank -w"), err


def test_root_stops_another_users_container_as_its_owner(as_user, image, name, chjoin):
    """`chjoinctl stop` run by root acts in a child with the owner's ids: it ends the test
    user's container, and nothing of it is left."""
    if as_user.who == "root":
        pytest.skip("root's own containers: the user case is the point")
    from conftest import Runner

    assert as_user.run(f"--name={name}", "-W", image, "--", "true").returncode == 0
    root = Runner(chjoin, "root")
    assert name in names_of(root)
    assert names_of(root)[name]["uid"] == as_user.uid
    done = ctl(root, "stop", name, "--uid", as_user.uid)
    assert done.returncode == 0, done.stderr
    assert name not in names_of(as_user)


def test_another_user_can_neither_enter_nor_stop_nor_see_your_container(as_user, image, name,
                                                                       chjoin):
    """The attacker (a second unprivileged user) names yours: its --name is its own (another
    record), its --join-pid into your holder is refused by the kernel, its chjoinctl sees and
    stops nothing of yours."""
    if as_user.who == "root":
        pytest.skip("the victim is the unprivileged test user")
    from conftest import Runner

    assert as_user.run(f"--name={name}", "-W", image, "--", "sh", "-c",
                       "echo mine > /secret").returncode == 0
    attacker = Runner(chjoin, "attacker")
    [holder] = holders(as_user.uid)
    done = attacker.run(f"--name={name}", "--", "cat", "/secret")
    assert done.returncode == 31 and "no container of that name is running" in done.stderr
    done = attacker.run(f"--join-pid={holder}", image, "--", "cat", "/secret")
    assert done.returncode == 31 and "mine" not in done.stdout
    assert errors(done.stderr), done.stderr
    assert name not in names_of(attacker)
    stop = ctl(attacker, "stop", name)
    assert stop.returncode == 1 and "no container named" in stop.stderr
    assert holders(as_user.uid) == [holder]
    again = as_user.run(f"--name={name}", "--", "cat", "/secret")
    assert (again.returncode, again.stdout) == (0, "mine\n")


def test_the_record_is_under_a_keyed_name_that_another_user_can_neither_compute_nor_squat(
        as_user, image, name, chjoin):
    """The name's record is the tag's first keyed rendezvous name (chjoin.names): the attacker,
    who can compute only the plain `chjoin-UID-name..NAME` and names under its own key, makes
    those first; the victim's container is created anyway, elsewhere, and stays out of reach."""
    if as_user.who == "root":
        pytest.skip("the victim is the unprivileged test user")
    from conftest import Runner

    attacker = Runner(chjoin, "attacker")
    tag = f"name..{name}"
    plain = f"/dev/shm/chjoin-{as_user.uid}-{tag}"
    squats = [plain, f"/dev/shm/sem.chjoin-{as_user.uid}-{tag}"] + \
        [f"/dev/shm/{n}" for n in attacker.shm_names(tag)[:2]]
    subprocess.run(["sh", "-c", 'for f; do : > "$f"; chmod 666 "$f"; done', "sh", *squats],
                   check=True, **attacker.identity_kwargs())
    try:
        done = as_user.run(f"--name={name}", "-W", image, "--", "sh", "-c",
                           "echo mine > /secret")
        assert done.returncode == 0, done.stderr
        assert errors(done.stderr) == []
        [record_name] = [n for n in shm_of(name) if not n.startswith("sem.")]
        assert record_name == as_user.shm_name(tag)
        assert f"/dev/shm/{record_name}" not in squats and tag not in record_name
        again = as_user.run(f"--name={name}", "--", "cat", "/secret")
        assert (again.returncode, again.stdout) == (0, "mine\n"), again.stderr
        peek = attacker.run(f"--name={name}", "--", "cat", "/secret")
        assert peek.returncode == 31 and "mine" not in peek.stdout
    finally:
        for path in squats:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def test_an_attach_asking_for_other_cdi_devices_is_one_line_and_31(as_user, image, name):
    """-d's selection is part of the container (its mount-options term): an attach naming
    other devices is refused in one line, one naming none takes the container's."""
    import shutil

    spec_dir = world_readable_dir("chjoin-named-cdi-")
    try:
        spec = {"cdiVersion": "0.5.0", "kind": "vendor.com/dev", "devices": [
            {"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/null"}]}},
            {"name": "1", "containerEdits": {"deviceNodes": [{"path": "/dev/zero"}]}}]}
        (spec_dir / "dev.json").write_text(json.dumps(spec))
        os.chmod(spec_dir / "dev.json", 0o644)
        env = {"CH_RUN_CDI_DIRS": str(spec_dir)}
        first = as_user.run(f"--name={name}", "-d", "vendor.com/dev=0", image, "--", "true",
                            env=env)
        assert first.returncode == 0, first.stderr
        other = as_user.run(f"--name={name}", "-dvendor.com/dev=1", "--", "true", env=env)
        assert other.returncode == 31, other.stderr
        [line] = errors(other.stderr)
        assert line.split(": error: ")[1].startswith(
            f"--name {name}: the container has mount options -d "), line
        assert "this rank -d " in line, line
        same = as_user.run(f"--name={name}", "-dvendor.com/dev=0", "--", "true", env=env)
        assert same.returncode == 0, same.stderr
        none = as_user.run(f"--name={name}", "--", "true", env=env)
        assert none.returncode == 0, none.stderr
    finally:
        shutil.rmtree(spec_dir, ignore_errors=True)


def test_seccomp_is_per_process_an_attach_gets_it_whatever_the_creator_did(as_user, image,
                                                                           name):
    """--seccomp is no term of the container: each rank asking for it gets the filter (and only
    it), in the same container."""
    first = as_user.run(f"--name={name}", "-W", image, "--", "sh", "-c",
                        f"grep Seccomp: /proc/self/status; {NS}")
    assert first.returncode == 0, first.stderr
    filtered = as_user.run(f"--name={name}", "--seccomp", "--", "sh", "-c",
                           f"grep Seccomp: /proc/self/status; {NS}")
    assert filtered.returncode == 0, filtered.stderr
    plain = as_user.run(f"--name={name}", "--", "sh", "-c",
                        f"grep Seccomp: /proc/self/status; {NS}")
    assert first.stdout.split("\n")[0].split() == ["Seccomp:", "0"]
    assert filtered.stdout.split("\n")[0].split() == ["Seccomp:", "2"]
    assert plain.stdout.split("\n")[0].split() == ["Seccomp:", "0"]
    namespaces = {r.stdout.split("\n")[1] for r in (first, filtered, plain)}
    assert len(namespaces) == 1


def test_gc_and_ps_leave_a_running_named_container_alone_and_sweep_a_dead_one(as_user, image,
                                                                             name, chjoin):
    """A named container is a group of size 0, never "corrupt": `chjoinctl gc` (its owner's,
    and root's, which sweeps as the owner) keeps it while its holder lives, `ps` lists it with
    no problem; once its holder is SIGKILLed, gc dismisses nothing and removes its record."""
    from conftest import Runner

    assert as_user.run(f"--name={name}", "-W", image, "--", "true").returncode == 0
    [holder] = holders(as_user.uid)
    record = [n for n in shm_of(name) if not n.startswith("sem.")]
    root = Runner(chjoin, "root")
    for runner in (as_user, root):
        done = ctl(runner, "gc", "--uid", as_user.uid, "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["removed"], report["holders"], report["problems"]) == ([], [], []), report
        assert holders(as_user.uid) == [holder] and shm_of(name)
    listed = ctl(as_user, "ps", "--json")
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)["records"]
    assert not [r for r in records if r["problem"]], records
    assert names_of(as_user)[name]["state"] == "running"
    os.kill(holder, 9)
    wait_for(lambda: not holders(as_user.uid), 5, "the holder's death")
    done = ctl(root, "gc", "--uid", as_user.uid, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert f"/dev/shm/{record[0]}" in report["removed"] and report["problems"] == [], report
    assert shm_of(name) == []


def test_steps_with_and_without_a_runtime_directory_meet_in_one_named_container(
        as_user, image, name):
    """The step that creates the container sees a private $XDG_RUNTIME_DIR (a logind session),
    a later one sees none, a third a fresh one (logind removed the old at logout): they compute
    one name, so each attaches to the one container."""
    runtime = world_readable_dir("chjoin-runtime-")
    try:
        os.chmod(runtime, 0o700)
        as_user.own(runtime)
        created = as_user.run(f"--name={name}", image, "--", "sh", "-c", NS,
                              env={"XDG_RUNTIME_DIR": str(runtime)})
        assert created.returncode == 0, created.stderr
        without = as_user.run(f"--name={name}:exec", "--", "sh", "-c", NS)
        assert (without.returncode, without.stdout) == (0, created.stdout), without.stderr
        subprocess.run(["rm", "-rf", f"{runtime}/chjoin"], check=True)
        fresh = as_user.run(f"--name={name}:exec", "--", "sh", "-c", NS,
                            env={"XDG_RUNTIME_DIR": str(runtime)})
        assert (fresh.returncode, fresh.stdout) == (0, created.stdout), fresh.stderr
    finally:
        subprocess.run(["rm", "-rf", str(runtime)], check=True)
