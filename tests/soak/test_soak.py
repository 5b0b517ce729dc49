"""A randomized, seeded soak of --join: random group sizes, too few and too many ranks, late
ranks, two groups at once on one tag, a rank with other options, tags reused from round to
round, and faults — a rank, winner or holder stopped at a checkpoint and SIGKILLed (or sent
SIGTERM there), or sent SIGKILL, SIGTERM or SIGSTOP at a random moment, alone or with its whole
process group.

After every round, what a user would check:
- the ranks that ran in one group (by the winner pid `-v` names) saw one container, and no
  group held more ranks than its count;
- no rank ran past its timeout + 2 s (plus its command and start-up time on a busy machine);
- every rank that failed before its command printed exactly one `chjoin[PID]: error:` line with
  its own pid; no Python traceback anywhere;
- a rank that nobody signalled (no signal aimed at it, no checkpoint stop in its environment)
  never exits 128+N: a peer whose winner was killed exits 31, or the winner's own error code;
- nothing outlived the round (holders give up at the timeout);
- /dev/shm holds nothing of the tag, unless something was SIGKILLed (the last process of a
  group killed that way can't clean up; the next rank on the tag does): a holder SIGTERMed at
  any instant, even as it starts, ends its group;
- a clean group on the tag right after forms in one container and leaves nothing at all.

CHJOIN_SOAK_ROUNDS (default 24 per identity) and CHJOIN_SOAK_SEED (default: from the clock)
set the run; a failure names its seed and round, and `CHJOIN_SOAK_SEED=S CHJOIN_SOAK_ONLY=R`
replays that round alone (`CHJOIN_SOAK_FIRST=R` starts a run there, with its neighbours). CHJOIN_SOAK_MAX sets the largest group (default 16; 48 for long runs).
"""

import os
import random
import re
import threading
import time

from conftest import winner_of

ROUNDS = int(os.environ.get("CHJOIN_SOAK_ROUNDS", "24"))
SEED = int(os.environ.get("CHJOIN_SOAK_SEED", str(int(time.time()) % 100000)))
ONLY = os.environ.get("CHJOIN_SOAK_ONLY")
FIRST = int(os.environ.get("CHJOIN_SOAK_FIRST", "0"))
LARGEST = int(os.environ.get("CHJOIN_SOAK_MAX", "16"))
AT_ONCE = 3                 # rounds run side by side, each on its own tag
POINTS = ["any:arrive", "any:locked", "winner:setup", "winner:publish", "peer:wait",
          "peer:join", "holder:start", "holder:ready", "holder:end"]
SHOW = ["sh", "-c", 'echo "$(readlink /proc/self/ns/user) $(readlink /proc/self/ns/mnt)"; '
        'sleep "$1"', "sh"]


def scenario(seed, number):
    """Round `number` of the run with `seed`: everything about it, drawn from one generator."""
    rng = random.Random(f"{seed}-{number}")
    count = rng.choice([1, 2, 2, 3, 4, 5, 8, 12, 16, 24, 32, 48])
    while count > LARGEST:
        count = rng.choice([2, 3, 4, 8, 12, 16])
    n = max(1, count + rng.choice([0, 0, 0, -1, -2, 1, count]))   # right, few, many, 2 groups
    spread = rng.choice([0, 0, 0.3, 1.0, 2.5])
    timeout = rng.choice([2, 3])
    ranks = []
    for i in range(n):
        rank = {"at": round(rng.random() * spread, 3), "args": [str(rng.choice([0, 0, 0.3]))]}
        if rng.random() < 0.05:
            rank["options"] = ["-t"]                   # a rank with other mount options
        ranks.append(rank)
    signals = []
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        if rng.random() < 0.5:
            ranks[rng.randrange(n)]["env"] = {"CHJOIN_TEST_STOP": rng.choice(POINTS)}
        else:
            signals.append({"at": round(rng.random() * (spread + 0.5), 3),
                            "signal": rng.choice([9, 9, 15, 19]),
                            "rank": "holders" if rng.random() < 0.25 else rng.randrange(n),
                            "group": rng.random() < 0.3})
    return {"tag": f"soak{number % 4}", "count": count, "timeout": timeout, "ranks": ranks,
            "signals": signals, "kill_delay": rng.choice([0.05, 0.3]),
            "stop_signal": rng.choice([9, 9, 15])}


def run_round(runner, image, s):
    """Start the round's ranks through tests/ranks.py; the `Group`."""
    base = ["-v", f"--join-ct={s['count']}", f"--join-tag={s['tag']}",
            f"--join-timeout={s['timeout']}"]
    ranks = []
    for r in s["ranks"]:
        args = r.get("options", []) + [str(image), "--", *SHOW, *r["args"]]
        ranks.append({"args": args, "at": r["at"], "env": r.get("env", {})})
    return runner.group(base, ranks, timeout=60, linger=s["timeout"] + 5,
                        kill_delay=s["kill_delay"], signals=s["signals"],
                        stop_signal=s.get("stop_signal", 9))


def names_of(runner, tag):
    name = runner.shm_name(tag)
    return sorted(n for n in os.listdir("/dev/shm") if n in (name, f"sem.{name}"))


def describe(runner, tag):
    """The groups in the tag's record, for a failure message: what each still waits for."""
    from chjoin import ns, record
    try:
        with open(f"/dev/shm/{runner.shm_name(tag)}", "rb") as f:
            groups = record.parse(f.read())[1]
    except (OSError, record.Corrupt) as e:
        return str(e)
    now = time.monotonic()
    return "; ".join(
        f"state {g.state} count {g.expected} deadline {g.deadline - now:+.1f} s holder "
        f"{g.holder} alive {ns.alive(*g.holder)} slots "
        f"{[(pid, state, start, ns.alive(pid, start)) for pid, state, start in g.slots]} "
        f"{g.error!r}" for g in groups or []) if groups is not None else "unreadable"


def check_round(runner, s, group):
    """The invariants of one round; a list of what broke."""
    broken = []
    sigkilled = bool(group.killed) or any(sig["signal"] in (9, 19) for sig in s["signals"])
    containers = {}
    signalled = {sig["rank"] for sig in s["signals"]}
    signalled |= {i for i, r in enumerate(s["ranks"]) if r.get("env")}
    for i, r in enumerate(group.ranks):
        if r.returncode >= 128 and i not in signalled:
            broken.append(f"rank {i}, never signalled, exited {r.returncode} (128+N: killed "
                          f"by a signal): {r.stderr!r}")
        if "Traceback" in r.stderr:
            broken.append(f"rank {i}: a traceback: {r.stderr!r}")
        ran = r.stdout.startswith("user:[")
        if ran:
            winner = winner_of(r)
            if winner is None and s["count"] > 1:
                broken.append(f"rank {i} ran without saying which group: {r.stderr!r}")
            containers.setdefault(winner, []).append(r.stdout.split("\n")[0])
        elif r.returncode > 0:
            errors = re.findall(r"^chjoin\[(\d+)\]: error: .*$", r.stderr, re.M)
            if len(errors) != 1 or int(errors[0]) != r.pid:
                broken.append(f"rank {i} failed (exit {r.returncode}) without exactly one "
                              f"error line of its own: {r.stderr!r}")
        elif r.returncode == 0:
            broken.append(f"rank {i} exited 0 without running its command: {r.stderr!r}")
        budget = s["timeout"] + 2 + 0.3 + 3       # + its command + start-up on a busy machine
        if r.elapsed > budget:
            broken.append(f"rank {i} ran {r.elapsed:.1f} s, past its timeout")
    for winner, shown in containers.items():
        if winner is not None and len(set(shown)) != 1:
            broken.append(f"group of winner {winner}: {len(set(shown))} containers: {shown}")
        if winner is not None and len(shown) > s["count"]:
            broken.append(f"group of winner {winner} held {len(shown)} ranks for a count of "
                          f"{s['count']}")
    if group.lingering:
        broken.append(f"processes outlived the round: {group.lingering}")
    left = names_of(runner, s["tag"])
    if left and not sigkilled:
        broken.append(f"left {left} with nothing SIGKILLed: {describe(runner, s['tag'])}")
    return broken


def clean_group(runner, image, tag):
    group = runner.group(["-v", "--join-ct=3", f"--join-tag={tag}", "--join-timeout=10",
                          str(image), "--", *SHOW, "0"], [{}] * 3, timeout=60, linger=5)
    broken = []
    if group.returncodes != [0] * 3:
        broken.append(f"clean group failed: {[r.stderr for r in group.ranks]}")
    elif len({r.stdout for r in group.ranks}) != 1:
        broken.append(f"clean group split: {[r.stdout for r in group.ranks]}")
    if group.lingering or names_of(runner, tag):
        broken.append(f"clean group left {group.lingering} {names_of(runner, tag)}: "
                      f"{describe(runner, tag)}")
    return broken


def test_soak(as_user, image):
    rounds = [int(ONLY)] if ONLY else list(range(FIRST, FIRST + ROUNDS))
    failures = []
    lock = threading.Lock()

    def one(number):
        s = scenario(SEED, number)
        try:
            group = run_round(as_user, image, s)
            broken = check_round(as_user, s, group)
            broken += clean_group(as_user, image, s["tag"])
        except Exception as e:          # a thread's exception would not fail the test
            broken = [f"the round itself failed: {type(e).__name__}: {e}"]
        if broken:
            with lock:
                failures.append(f"seed {SEED} round {number} ({as_user.who}): {s}\n  " +
                                "\n  ".join(broken))

    # rounds side by side, each on its own tag (round i uses tag soak{i % 4})
    for batch in range(0, len(rounds), AT_ONCE):
        threads = [threading.Thread(target=one, args=(number,))
                   for number in rounds[batch:batch + AT_ONCE]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, "\n".join(failures)
    print(f"soak: seed {SEED}, {len(rounds)} rounds as {as_user.who}")
