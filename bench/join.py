"""N-way join, side by side with ch-run: the wall time from starting N ranks on this node (as a
launcher would, all at once) to the last one ending, each running CMD in IMAGE with --join.

    python bench/join.py IMAGE [-n 32] [-r 15] [--cmd 'true'] [--chjoin PATH] [--ch-run PATH]

Rounds alternate between the launchers; the medians, their ratio, and each launcher's failed
ranks are printed. The baseline is the same N processes running CMD with no container.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import time


def one_round(argv, n, env):
    started = time.perf_counter()
    procs = [subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(n)]
    failed = sum(p.wait() != 0 for p in procs)
    return time.perf_counter() - started, failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("-n", type=int, default=32)
    parser.add_argument("-r", "--rounds", type=int, default=15)
    parser.add_argument("--cmd", default="true")
    parser.add_argument("--chjoin", default=shutil.which("chjoin") or "chjoin")
    parser.add_argument("--ch-run", default=shutil.which("ch-run") or "ch-run")
    args = parser.parse_args()
    env = dict(os.environ, USER=os.environ.get("USER") or "root")
    cmd = args.cmd.split()
    runs = {
        "no container": cmd,
        "chjoin, own containers": [args.chjoin, args.image, "--", *cmd],
        "chjoin --join": [args.chjoin, f"--join-ct={args.n}", "--join-tag=bench", args.image,
                          "--", *cmd],
        "ch-run --join": [args.ch_run, f"--join-ct={args.n}", "--join-tag=bench", args.image,
                          "--", *cmd],
    }
    times = {name: [] for name in runs}
    failures = {name: 0 for name in runs}
    for _ in range(args.rounds):
        for name, argv in runs.items():
            elapsed, failed = one_round(argv, args.n, env)
            for leftover in os.listdir("/dev/shm"):     # ch-run leaves its objects behind
                if leftover.startswith(("ch-run_", "sem.ch-run_")) and "bench" in leftover:
                    os.unlink(f"/dev/shm/{leftover}")
            times[name].append(elapsed)
            failures[name] += failed
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["no container"]
    print(f"{args.n} ranks, {args.rounds} rounds, command {args.cmd!r}, medians:")
    for name in runs:
        print(f"  {name:22} {median[name] * 1000:8.1f} ms   overhead "
              f"{(median[name] - base) * 1000:8.1f} ms   failed ranks "
              f"{failures[name]}/{args.n * args.rounds}")
    ours = median["chjoin --join"] - base
    theirs = median["ch-run --join"] - base
    print(f"  overhead ratio chjoin/ch-run: {ours / theirs:.2f}")
    alone = median["chjoin, own containers"]
    print(f"  chjoin --join vs {args.n} separate chjoin containers: "
          f"{median['chjoin --join'] / alone:.2f}x")


if __name__ == "__main__":
    main()
