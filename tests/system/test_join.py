"""--join: the ranks of one launch on one node share one container, and no failure of one rank,
of the winner or of the holder breaks the node. No barrier: the winner's command starts as soon
as the container is built, a peer's as soon as it is in, and a peer arriving later (until the
join timeout) enters the same container. Every test runs as root and as the unprivileged test
user, checks what the survivors saw, that /dev/shm holds nothing of the group afterwards and
that nothing outlived the ranks, and most then run the next group with the same tag."""

import os
import re
import shutil
import subprocess

import pytest

from conftest import build_busybox_image, winner_of, world_readable_dir

# Each rank prints the container it is in (user and mount namespace), and its uid.
SHOW = ["--", "sh", "-c", "echo $(readlink /proc/self/ns/user) $(readlink /proc/self/ns/mnt)"]


def containers(group):
    """The distinct containers the successful ranks ran in."""
    return {r.stdout.strip() for r in group.ranks if r.returncode == 0}


def shm_objects(runner):
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(("chjoin-", "sem.chjoin-"))
                  and f"-{runner.uid}-" in n)


def assert_clean(runner, group):
    assert shm_objects(runner) == [], "the group left objects in /dev/shm"
    assert group.lingering == [], "a process outlived the ranks (the holder?)"


def assert_next_group_works(runner, image, args, n=3):
    group = runner.group([*args, f"--join-ct={n}", image, *SHOW], [{}] * n)
    assert group.returncodes == [0] * n, [r.stderr for r in group.ranks]
    assert len(containers(group)) == 1
    assert_clean(runner, group)


def ranks(n, **first):
    """n plain ranks; keyword arguments describe the first one (env, close, first)."""
    return [first] + [{}] * (n - 1) if first else [{}] * n


@pytest.mark.parametrize("n", [2, 8, 32])
def test_all_ranks_share_one_container(as_user, image, n):
    group = as_user.group(["--join-ct", n, "--join-tag=share", image, *SHOW], ranks(n))
    assert group.returncodes == [0] * n, [r.stderr for r in group.ranks if r.returncode]
    assert len(containers(group)) == 1
    host = os.readlink("/proc/self/ns/mnt")
    assert host not in group.ranks[0].stdout
    assert_clean(as_user, group)


def test_the_winners_command_may_exit_at_once(as_user, image):
    """ch-run defect 1: the winner runs `true` and is gone before the others join."""
    group = as_user.group(["--join-ct=8", "--join-tag=fast", image, "--", "true"], ranks(8))
    assert group.returncodes == [0] * 8, [r.stderr for r in group.ranks if r.returncode]
    assert_clean(as_user, group)


def test_verbose_reports_winner_joins_peers_left_and_cleanup(as_user, image):
    group = as_user.group(["-v", "--join-ct=3", "--join-tag=talk", image, "--", "true"],
                          ranks(3))
    text = "".join(r.stderr for r in group.ranks)
    assert text.count("join: won: building the container for 3 ranks") == 1
    assert len(re.findall(r"join: joined the container of winner pid \d+ through pid", text)) == 2
    assert "peers left excluding myself" in text
    assert text.count("join: cleaning up IPC resources") == 1
    assert "join: peer group tag talk (from command line)" in text


def test_verbose_prints_ch_runs_join_lines(as_user, image):
    """ch-run's own -v lines, which scripts and ch-run's tests read, beside chjoin's."""
    group = as_user.group(["-v", "--join-ct=2", "--join-tag=chlines", image, "--", "true"],
                          [{}, {"at": 0.5}])
    winner, peer = group.ranks
    assert "join: 1 2 chlines 0\n" in winner.stderr and "join: I won\n" in winner.stderr
    assert "join: I lost\n" in peer.stderr
    assert re.search(r"joining namespaces of pid \d+\n", peer.stderr)
    winner_pid = re.search(r"^chjoin\[(\d+)\]: join: winner initializing shared data$",
                           winner.stderr, re.M).group(1)     # as ch-run's join test reads them
    assert f"joining namespaces of pid {winner_pid}\n" in peer.stderr
    assert "join: 1 peers left excluding myself\n" in winner.stderr
    assert "join: done\n" in winner.stderr and "join: done\n" in peer.stderr


def test_run_through_a_link_named_ch_run_its_lines_say_ch_run(as_user, image):
    """A drop-in ch-run (a link of that name to chjoin) names itself as invoked, as ch-run."""
    link_dir = world_readable_dir("chjoin-link-")
    try:
        os.symlink(as_user.chjoin, link_dir / "ch-run")
        done = subprocess.run([str(link_dir / "ch-run"), "-v", str(image), "--", "true"],
                              capture_output=True, text=True, env=as_user.env(), cwd="/",
                              **as_user.identity_kwargs())
    finally:
        shutil.rmtree(link_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^ch-run\[\d+\]: join: 0 0 \(null\) 0$", done.stderr, re.M)
    assert "chjoin[" not in done.stderr


def test_container_root_mounts_and_its_peers_see_the_mount(as_user, image):
    """The container's mount namespace belongs to its own user namespace, as in ch-run: root
    in the container may mount, and peers enter that mount namespace."""
    script = ("if [ -e /mnt/f ]; then cat /mnt/f; else mount -t tmpfs none /mnt && "
              "echo hi > /mnt/f && sleep 2; fi")
    group = as_user.group(["-u0", "-g0", "--join-ct=2", "--join-tag=mnt", image, "--", "sh",
                           "-c", script], [{}, {"at": 0.5}])
    assert group.returncodes == [0, 0], [r.stderr for r in group.ranks]
    assert group.ranks[1].stdout == "hi\n"
    assert not os.path.exists("/mnt/f")
    assert_clean(as_user, group)


def test_each_peer_applies_its_own_environment_options(as_user, image):
    rank_env = [{"env": {"RANK_NAME": f"r{i}"}} for i in range(4)]
    group = as_user.group(["--join-ct=4", "--join-tag=env", "--set-env=MINE=$RANK_NAME",
                           "--unset-env=RANK_NAME", image, "--", "sh", "-c",
                           "echo $MINE ${RANK_NAME:-unset}"], rank_env)
    assert [r.stdout.strip() for r in group.ranks] == [f"r{i} unset" for i in range(4)]


def test_winner_setup_failure_reaches_every_peer_at_once(as_user, image):
    """A bad -b fails the winner after the election; the peers that had arrived report the
    winner's error well before the join timeout (60 s; the test launcher kills ranks after
    20 s). Ranks arriving after the failed group ended try again as a new group, and fail the
    same way by themselves."""
    group = as_user.group(["--join-ct=4", "--join-tag=bad", "--join-timeout=60", "-b",
                           "/no/such/dir:/mnt", image, "--", "true"], ranks(4), timeout=20)
    assert group.returncodes == [31] * 4
    for r in group.ranks:
        assert "source not found: /no/such/dir" in r.stderr
        assert len(r.stderr.splitlines()) == 1, r.stderr
    assert_clean(as_user, group)
    assert_next_group_works(as_user, image, ["--join-tag=bad"])


def test_missing_image_fails_every_rank_by_itself(as_user, image):
    group = as_user.group(["--join-ct=3", "--join-tag=noimg", "/no/image", "--", "true"],
                          ranks(3), timeout=20)
    assert group.returncodes == [31] * 3
    assert all("can't stat: /no/image: No such file or directory" in r.stderr
               for r in group.ranks)
    assert_clean(as_user, group)


def test_a_peer_started_after_the_winners_command_exited_joins_its_container(as_user, image):
    """The winner runs `true` and is long gone when the peer starts: its holder kept the
    container, and the peer enters it (ch-run: `no PID`)."""
    group = as_user.group(["--join-ct=2", "--join-tag=late", image, *SHOW],
                          [{}, {"at": 1.5}])
    assert group.returncodes == [0, 0], [r.stderr for r in group.ranks]
    assert group.ranks[0].elapsed < 1.5, "the winner waited for its peer"
    assert len(containers(group)) == 1
    assert_clean(as_user, group)


def test_no_barrier_the_winner_runs_before_its_peers_arrive(as_user, image, host_dir):
    """The winner's command runs while its peer has not even started: it sees the marker file
    the winner writes, in the same container's /tmp."""
    marker = host_dir / "winner-ran"
    os.chmod(host_dir, 0o777)
    group = as_user.group(["--join-ct=2", "--join-tag=nobar", "-b", f"{host_dir}:/mnt", image,
                           "--", "sh", "-c", "[ -e /mnt/winner-ran ] && echo peer || "
                           "{ touch /mnt/winner-ran; echo winner; }"],
                          [{}, {"at": 1.0}])
    assert group.returncodes == [0, 0], [r.stderr for r in group.ranks]
    assert [r.stdout.strip() for r in group.ranks] == ["winner", "peer"]
    assert marker.exists()
    assert_clean(as_user, group)


# SIGKILL at each phase. The victim stops itself at the named point ($CHJOIN_TEST_STOP); the
# test launcher then kills it. "first" makes it the first to arrive, i.e. the winner.
TIMEOUT = ["--join-timeout=4"]


def stop_at(point, first=False):
    return {"env": {"CHJOIN_TEST_STOP": point}, "first": first}


@pytest.mark.parametrize("point", ["any:arrive", "any:locked"])
def test_killed_winner_before_or_during_election(as_user, image, point):
    """The victim dies before it could build anything: the others elect another winner and run
    in one container (too few for the count: they run all the same, and the holder gives up
    at the timeout). The tag works again right after (ch-run defect 2: wedged forever)."""
    group = as_user.group(["--join-ct=4", "--join-tag=k1", *TIMEOUT, image, *SHOW],
                          [stop_at(point, first=True)] + [{}] * 3, linger=9)
    assert len(group.killed) == 1, "the victim never stopped"
    victim, survivors = group.ranks[0], group.ranks[1:]
    assert victim.returncode == -9
    assert [r.returncode for r in survivors] == [0] * 3, [r.stderr for r in survivors]
    assert len(containers(group)) == 1
    assert_clean(as_user, group)
    assert_next_group_works(as_user, image, ["--join-tag=k1"])


def test_killed_winner_during_setup_fails_peers_fast(as_user, image):
    group = as_user.group(["--join-ct=4", "--join-tag=k2", "--join-timeout=60", image, *SHOW],
                          [stop_at("winner:setup", first=True)] + [{}] * 3, timeout=20)
    assert len(group.killed) == 1, "the victim never stopped"
    assert group.ranks[0].returncode == -9
    for r in group.ranks[1:]:
        assert r.returncode == 31
        assert re.search(r"the winner \(pid \d+\) died while building the container", r.stderr)
    assert_clean(as_user, group)
    assert_next_group_works(as_user, image, ["--join-tag=k2"])


def test_killed_winner_holding_the_lock_frees_it_at_once(as_user, image):
    """Issue 11, cases 2 and 6: the winner is killed while it holds the record's lock, just
    forked its holder. The holder has a lock description of its own, so the kernel frees the
    lock at once: the ranks queued on it find the dead winner's group, end it, and form a new
    one, long before the 60 s timeout (the test launcher would kill them at 20 s)."""
    group = as_user.group(["--join-ct=3", "--join-tag=k3", "--join-timeout=60", image, *SHOW],
                          [stop_at("winner:publish", first=True)] + [{}] * 3, timeout=20)
    assert len(group.killed) == 1, "the victim never stopped"
    survivors = group.ranks[1:]
    assert [r.returncode for r in survivors] == [0] * 3, [r.stderr for r in survivors]
    assert all(r.elapsed < 10 for r in survivors), "they waited for the lock"
    assert len(containers(group)) == 1
    assert_clean(as_user, group)
    assert_next_group_works(as_user, image, ["--join-tag=k3"])


def test_killed_peer_while_waiting_does_not_hold_up_the_others(as_user, image):
    group = as_user.group(["--join-ct=4", "--join-tag=k3w", image, *SHOW],
                          [{}] * 3 + [stop_at("peer:wait")], timeout=20, stagger=0.1)
    assert len(group.killed) == 1, "the victim never stopped"
    survivors = [r for r in group.ranks if r.returncode != -9]
    assert [r.returncode for r in survivors] == [0] * 3, [r.stderr for r in survivors]
    assert len(containers(group)) == 1
    assert_clean(as_user, group)
    assert_next_group_works(as_user, image, ["--join-tag=k3w"])


def test_killed_peer_while_joining_leaves_the_others_running(as_user, image):
    group = as_user.group(["--join-ct=4", "--join-tag=k4", image, *SHOW],
                          [{}] * 3 + [stop_at("peer:join")], timeout=20, stagger=0.1)
    assert len(group.killed) == 1, "the victim never stopped"
    survivors = [r for r in group.ranks if r.returncode != -9]
    assert [r.returncode for r in survivors] == [0] * len(survivors)
    assert len(survivors) >= 3 and len(containers(group)) == 1
    assert_clean(as_user, group)
    assert_next_group_works(as_user, image, ["--join-tag=k4"])


@pytest.mark.parametrize("point", ["holder:start", "holder:ready"])
def test_killed_holder_does_not_strand_the_peers(as_user, image, point):
    """Without its holder, peers enter through a rank still inside (and fork a new holder); if
    none is left, the container is gone and the next rank starts a new group. No rank fails,
    and the ranks of one group always share one container."""
    group = as_user.group(["-v", "--join-ct=4", "--join-tag=k5", "--join-timeout=3", image,
                           *SHOW], [stop_at(point)] * 4, timeout=20, stagger=0.2, linger=8)
    assert group.killed, "the victim never stopped"
    assert group.returncodes == [0] * 4, [r.stderr for r in group.ranks]
    by_group = {}
    for r in group.ranks:
        by_group.setdefault(winner_of(r), set()).add(r.stdout)
    assert all(len(shown) == 1 for shown in by_group.values()), by_group
    assert group.lingering == []
    assert_next_group_works(as_user, image, ["--join-tag=k5"])
    assert shm_objects(as_user) == []


def test_a_peer_takes_over_from_a_dead_holder(as_user, image):
    """The holder dies while the winner's command still runs: the next peer enters through
    the winner and forks a new holder, which keeps the container for the last peer, after
    the winner is gone."""
    group = as_user.group(["-v", "--join-ct=3", "--join-tag=k6", "--join-timeout=10", image,
                           "--", "sh", "-c", "readlink /proc/self/ns/mnt; sleep 1"],
                          [{}, {"at": 0.6}, {"at": 2.0}], timeout=20,
                          signals=[{"at": 0.4, "signal": 9, "rank": "holders"}])
    assert group.holders_signalled, "no holder to kill"
    assert group.returncodes == [0] * 3, [r.stderr for r in group.ranks]
    assert len(containers(group)) == 1
    assert "now keeps the container" in group.ranks[1].stderr
    assert_clean(as_user, group)


@pytest.mark.parametrize("fd", [0, 1, 2])
def test_closed_stdin_stdout_or_stderr(as_user, image, fd):
    """Ranks started with fd 0, 1 or 2 closed still join (ch-run: wedged semaphore); the
    command gets the descriptor closed, as it was given."""
    group = as_user.group(["--join-ct=4", "--join-tag=closed", image, "--", "sh", "-c",
                           f"echo $(readlink /proc/self/ns/mnt); [ -e /proc/self/fd/{fd} ] "
                           "&& echo fd-open >&2 || true"],
                          [{"close": [fd]}] * 2 + [{}] * 2)
    assert group.returncodes == [0] * 4, [r.stderr for r in group.ranks]
    if fd != 1:
        assert len(containers(group)) == 1
    assert "fd-open" not in group.ranks[0].stderr
    assert_clean(as_user, group)


def test_too_few_ranks_run_and_the_holder_gives_up_at_the_timeout(as_user, image):
    """Three ranks for a group of four run at once, in one container, saying nothing; the
    holder waits for the fourth until the timeout, then removes everything."""
    group = as_user.group(["--join-ct=4", "--join-tag=few", "--join-timeout=2", image, *SHOW],
                          ranks(3), timeout=20)
    assert group.returncodes == [0] * 3
    assert all(r.stderr == "" for r in group.ranks), [r.stderr for r in group.ranks]
    assert all(r.elapsed < 2 for r in group.ranks), "a rank waited for the missing one"
    assert len(containers(group)) == 1
    assert_clean(as_user, group)


def test_too_many_ranks_never_split_the_first_group(as_user, image):
    """Five ranks for a group of four: four share one container; the fifth starts a group of
    its own and runs in it."""
    group = as_user.group(["-v", "--join-ct=4", "--join-tag=many", "--join-timeout=3", image,
                           *SHOW], ranks(5), timeout=20)
    assert group.returncodes == [0] * 5
    sizes = {}
    for r in group.ranks:
        sizes.setdefault(winner_of(r), set()).add(r.stdout)
    assert sorted(len([r for r in group.ranks if winner_of(r) == w]) for w in sizes) == [1, 4]
    assert all(len(shown) == 1 for shown in sizes.values())
    assert_clean(as_user, group)


@pytest.fixture
def second_image():
    base = world_readable_dir("chjoin-img2-")
    root = build_busybox_image(base / "img")
    (root / "etc" / "image-file").write_text("second image\n")
    yield root
    shutil.rmtree(base, ignore_errors=True)


WHICH = ["--", "sh", "-c", "echo $(cat /etc/image-file) $(readlink /proc/self/ns/mnt)"]


def test_same_tag_different_images_at_once_each_run_in_their_own(as_user, image, second_image):
    """Two groups of 3 with one tag and different images: each rank runs in its own image, each
    group in one container, side by side (ch-run defect 8: wrong image)."""
    mixed = [{"args": [str(image if i % 2 else second_image), *WHICH]} for i in range(6)]
    group = as_user.group(["--join-ct=3", "--join-tag=same", "--join-timeout=20"], mixed)
    assert group.returncodes == [0] * 6, [r.stderr for r in group.ranks]
    for i, r in enumerate(group.ranks):
        expected = "from the image" if i % 2 else "second image"
        assert r.stdout.startswith(expected), (i, r.stdout)
    assert len({r.stdout for r in group.ranks}) == 2
    assert_clean(as_user, group)


def test_a_mismatched_peer_is_told_what_differs(as_user, image, host_dir):
    """It never enters a container made with other options: it is warned, naming the
    difference, and runs in a group of its own."""
    group = as_user.group(["--join-ct=2", "--join-tag=mis", "--join-timeout=2"],
                          [{"args": [str(image), *SHOW]},
                           {"args": ["-b", f"{host_dir}:/mnt", str(image), *SHOW]}],
                          stagger=0.5)
    assert group.returncodes == [0, 0]
    mismatched = group.ranks[1]
    assert re.fullmatch(r"chjoin\[\d+\]: warning: join: tag mis has a group with mount options "
                        r"none, this rank -b \S+:/mnt; this rank starts a group of its own\n",
                        mismatched.stderr), mismatched.stderr
    assert len(containers(group)) == 2
    assert_clean(as_user, group)


def test_a_mismatched_rank_arriving_first_never_delays_the_others(as_user, image, second_image):
    """Issue 11, case 7: a rank with image B is first on the tag; the three image-A ranks don't
    wait for its group (which waits 6 s for peers that never come): they share one container
    of image A at once."""
    group = as_user.group(["--join-ct=3", "--join-tag=odd", "--join-timeout=6"],
                          [{"args": [str(second_image), *WHICH]}] +
                          [{"args": [str(image), *WHICH], "at": 0.5}] * 3, timeout=20, linger=10)
    assert group.returncodes == [0] * 4, [r.stderr for r in group.ranks]
    assert all(r.elapsed < 6 for r in group.ranks[1:]), "image-A ranks waited for B's group"
    assert group.ranks[0].stdout.startswith("second image")
    assert len({r.stdout for r in group.ranks[1:]}) == 1
    assert group.ranks[1].stdout.startswith("from the image")
    assert_clean(as_user, group)


def test_two_slurm_jobs_with_the_same_step_number_stay_apart(as_user, image, second_image):
    """ch-run defect 6: the default tag was the step number only."""
    def job(job_id, img):
        env = {"SLURM_JOB_ID": job_id, "SLURM_STEP_ID": "0", "SLURM_NODEID": "0",
               "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_CPUS_ON_NODE": "2"}
        return [{"env": env, "args": [str(img), *WHICH]}] * 2
    group = as_user.group(["-j"], job("100", image) + job("101", second_image))
    assert group.returncodes == [0] * 4, [r.stderr for r in group.ranks]
    outputs = [r.stdout for r in group.ranks]
    assert outputs[0] == outputs[1] and outputs[2] == outputs[3] and outputs[0] != outputs[2]
    assert outputs[0].startswith("from the image") and outputs[2].startswith("second image")
    assert_clean(as_user, group)


def squat(names, squatter):
    """Another user's empty 0666 files under each of `names` and their semaphores'."""
    made = []
    for name in names:
        for path in (f"/dev/shm/{name}", f"/dev/shm/sem.{name}"):
            with open(path, "w"):
                pass
            os.chown(path, squatter, squatter)
            os.chmod(path, 0o666)
            made.append(path)
    return made


def test_a_name_squatted_by_another_user_is_skipped(as_user, image):
    """ch-run defect 4: another user creates the group's names first (here the first keyed one,
    as if seen in /dev/shm during an earlier group): the ranks meet under the next one."""
    squatter = 1 if as_user.uid != 1 else 2          # daemon or bin: someone else
    names = as_user.shm_names("squat")
    made = squat(names[:1], squatter)
    try:
        group = as_user.group(["--join-ct=2", "--join-tag=squat", image, *WHICH], ranks(2),
                              timeout=20)
    finally:
        for path in made:
            os.unlink(path)
    assert group.returncodes == [0, 0], [r.stderr for r in group.ranks]
    assert len(containers(group)) == 1
    assert_clean(as_user, group)


def test_every_name_squatted_is_a_clear_error(as_user, image):
    """A user whose every name is taken (the plain one where there is no key) fails at once
    with one line naming the object and its owner, never a hang."""
    squatter = 1 if as_user.uid != 1 else 2
    names = as_user.shm_names("squat")
    made = squat(names, squatter)
    try:
        group = as_user.group(["--join-ct=2", "--join-tag=squat", image, "--", "true"], ranks(2),
                              timeout=20)
    finally:
        for path in made:
            os.unlink(path)
    assert group.returncodes == [31, 31]
    for r in group.ranks:
        error = [line for line in r.stderr.splitlines() if "error" in line]
        assert len(error) == 1, r.stderr
        assert re.fullmatch(rf"chjoin\[\d+\]: error: join: can't use /dev/shm/{names[-1]}: owned "
                            rf"by uid {squatter}, mode 666; another user holds this group's name"
                            rf" \(and the {len(names) - 1} names before it\)", error[0]), r.stderr


def test_join_pid_enters_a_running_container(as_user, image):
    import subprocess
    import time
    runner = as_user
    sleeper = subprocess.Popen([runner.chjoin, str(image), "--", "sleep", "30"],
                               env=runner.env(), **runner.identity_kwargs())
    try:
        target = f"/proc/{sleeper.pid}/ns/mnt"
        for _ in range(200):
            if os.readlink(target) != os.readlink("/proc/self/ns/mnt"):
                break
            time.sleep(0.01)
        result = runner.run(f"--join-pid={sleeper.pid}", image, "--", "readlink",
                            "/proc/self/ns/mnt")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == os.readlink(target)
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("round_", range(20))
def test_64_ranks_on_two_cores(as_user, image, round_):
    group = as_user.group(["--join-ct=64", "--join-tag=crowd", image, *SHOW], ranks(64),
                          timeout=120)
    assert group.returncodes == [0] * 64, [r.stderr for r in group.ranks if r.returncode][:3]
    assert len(containers(group)) == 1
    assert_clean(as_user, group)


# Issue 11: states that an earlier protocol could not leave. Each first breaks a group, then
# shows that the next group on the tag forms in one container and leaves nothing.
BREAKS = {
    "winner and holder killed together": (
        [{}], {"signals": [{"at": 1.0, "signal": 9, "rank": 0, "group": True}]}, "sleep 30"),
    "winner killed while building": (
        [stop_at("winner:setup", first=True), {}], {}, "true"),
    "peer killed while joining": (
        [{}, stop_at("peer:join")], {"stagger": 0.3}, "true"),
    "winner killed building, then its waiting peer": (
        [stop_at("winner:setup", first=True), stop_at("peer:wait")], {}, "true"),
}


@pytest.mark.parametrize("what", BREAKS)
def test_a_broken_group_never_splits_or_blocks_the_next(as_user, image, what):
    first, options, command = BREAKS[what]
    broken = as_user.group(["--join-ct=3", "--join-tag=split", "--join-timeout=2", image, "--",
                            "sh", "-c", command], first, timeout=20, linger=6, **options)
    assert -9 in broken.returncodes, [r.stderr for r in broken.ranks]
    assert broken.lingering == []
    group = as_user.group(["-v", "--join-ct=2", "--join-tag=split", image, *SHOW], ranks(2),
                          timeout=20)
    assert group.returncodes == [0, 0], [r.stderr for r in group.ranks]
    assert "".join(r.stderr for r in group.ranks).count("join: won") == 1, "two winners"
    assert len(containers(group)) == 1
    assert_clean(as_user, group)


def test_the_winner_never_waits_for_a_dead_peer(as_user, image):
    """Issue 11, case 4: the holder dies, and a peer dies while joining: the winner's command
    has run and ended regardless; the next group cleans up and works."""
    group = as_user.group(["--join-ct=3", "--join-tag=dead", "--join-timeout=10", image, "--",
                           "sleep", "1.5"],
                          [{"env": {"CHJOIN_TEST_STOP": "holder:start"}},
                           {"env": {"CHJOIN_TEST_STOP": "peer:join"}, "at": 0.7}], timeout=20)
    assert len(group.killed) == 2 and group.killed_holders, "the victims never stopped"
    assert group.ranks[0].returncode == 0 and group.ranks[0].elapsed < 10
    assert_next_group_works(as_user, image, ["--join-tag=dead"])
    assert shm_objects(as_user) == []


def test_signals_in_a_burst_give_one_error_line_and_no_traceback(as_user, image):
    """Issue 11, case 5: a waiting peer gets SIGTERM ten times in 50 ms (a launcher forwarding a
    process-group signal does that): one `error:` line, exit 143, no Python traceback."""
    burst = [{"at": 1.0 + i * 0.005, "signal": 15, "rank": 1} for i in range(10)]
    group = as_user.group(["--join-ct=2", "--join-tag=burst", image, "--", "true"],
                          [stop_at("winner:setup", first=True), {"at": 0.3}], timeout=20,
                          kill_delay=2, signals=burst)
    peer = group.ranks[1]
    assert peer.returncode == 143, peer.stderr
    assert re.fullmatch(r"chjoin\[\d+\]: error: join: group burst: SIGTERM received before the "
                        r"container was ready\n", peer.stderr), peer.stderr
    assert group.lingering == []
    assert_next_group_works(as_user, image, ["--join-tag=burst"])   # the winner was SIGKILLed


def test_sigterm_to_the_holder_ends_its_group_at_once(as_user, image):
    """Too few ranks, so the holder would wait 30 s: a SIGTERM (scancel, pkill) ends it now,
    and it removes the group's names on its way out."""
    group = as_user.group(["--join-ct=4", "--join-tag=hterm", image, *SHOW], ranks(2),
                          timeout=20, linger=1.5,
                          signals=[{"at": 1.5, "signal": 15, "rank": "holders"}])
    assert group.holders_signalled
    assert group.returncodes == [0, 0]
    assert_clean(as_user, group)


# The two defects the soak found (issue 19), replayed at a known instant: the victim stops
# itself at the point, the test launcher sends it SIGTERM and SIGCONT.

def test_a_holder_sigtermed_as_it_starts_ends_its_group(as_user, image):
    """SIGTERM reaches the holder before its loop (it inherited the rank's handler): it still
    ends its group and removes the names; no READY record is left with nobody in it (only a
    SIGKILL may leave one)."""
    group = as_user.group(["-v", "--join-ct=3", "--join-tag=t1", "--join-timeout=20", image,
                           "--", "sleep", "1.5"], [stop_at("holder:start", first=True)],
                          timeout=30, kill_delay=0.5, stop_signal=15, linger=5)
    assert group.terminated and not group.killed, "the holder never stopped"
    assert group.returncodes == [0], group.ranks[0].stderr
    assert group.lingering == []
    assert shm_objects(as_user) == [], "the holder's group was left behind"
    assert_next_group_works(as_user, image, ["--join-tag=t1"])


def test_peers_of_a_winner_sigtermed_while_building_exit_31_not_143(as_user, image):
    """The winner gets SIGTERM before the container is ready and exits 143 (killed by signal
    15); its peers, which nobody signalled, fail at once with the winner's message and exit 31
    (128+N means "this rank was signalled")."""
    group = as_user.group(["--join-ct=4", "--join-tag=t2", "--join-timeout=20", image, *SHOW],
                          [stop_at("winner:setup", first=True)] + [{}] * 3, timeout=30,
                          kill_delay=1.0, stop_signal=15)
    assert group.terminated, "the winner never stopped"
    winner, peers = group.ranks[0], group.ranks[1:]
    assert winner.returncode == 143, winner.stderr
    assert "SIGTERM received before the container was ready" in winner.stderr
    assert [r.returncode for r in peers] == [31] * 3, [r.stderr for r in peers]
    assert all("the winner (pid" in r.stderr and "SIGTERM" in r.stderr for r in peers)
    assert_clean(as_user, group)


def test_peers_of_a_failed_winner_keep_its_own_error_code(as_user, image):
    """A winner that fails with an error code of its own (84: a SquashFS image it can't
    mount) gives its peers that code."""
    bad = world_readable_dir("chjoin-bad-sqfs-")
    try:
        (bad / "img.sqfs").write_bytes(b"hsqs" + bytes(4092))
        os.chmod(bad / "img.sqfs", 0o644)
        group = as_user.group(["--join-ct=3", "--join-tag=t3", bad / "img.sqfs", "--", "true"],
                              [{}, {"at": 0.2}, {"at": 0.2}], timeout=30)
    finally:
        shutil.rmtree(bad, ignore_errors=True)
    assert group.returncodes == [84] * 3, [r.stderr for r in group.ranks]
