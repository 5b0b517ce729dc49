"""A small launcher for the join tests, in the role `srun` or `mpirun` plays: it starts N ranks
of one command at once, each with its own extra environment, waits for them, and reports what
each printed and returned.

- Like slurmstepd it is a child subreaper: processes the ranks leave behind (the holder) are
  reparented to it, so it reports any that outlive the ranks by more than `linger` seconds
  (and kills them), and reaps the rest.
- Fault injection: ranks run with $CHJOIN_TEST_STOP stop themselves (SIGSTOP) at a named
  point; this launcher SIGKILLs every stopped child `kill_delay` seconds after seeing it stop.
  Ranks marked `first` start before the others, which start once a first one has stopped.

Run with the request as JSON on stdin; prints the result as JSON.
"""

import ctypes
import json
import os
import subprocess
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36


def children(state=None):
    """Live children of this process (the ranks, and what was reparented to us)."""
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z" and (state is None or fields[0] == state):
            found.append(int(entry))
    return found


def start(request, rank):
    close = rank.get("close", [])
    proc = subprocess.Popen(
        request["argv"] + rank.get("args", []), env=dict(request["env"], **rank.get("env", {})),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
        preexec_fn=(lambda: [os.close(fd) for fd in close]) if close else None)
    result = {"pid": proc.pid}

    def collect():
        try:
            out, err = proc.communicate(timeout=request["timeout"])
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += b"\n[ranks.py: killed at the test's timeout]"
        result.update(returncode=proc.returncode, stdout=out.decode(), stderr=err.decode())
    thread = threading.Thread(target=collect)
    thread.start()
    return result, thread


def main():
    request = json.load(sys.stdin)
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    order = sorted(range(len(request["ranks"])), key=lambda i: not request["ranks"][i].get("first"))
    results, threads, killed, seen = [None] * len(order), [], [], {}
    waiting_for_first = any(r.get("first") and "CHJOIN_TEST_STOP" in r.get("env", {})
                            for r in request["ranks"])
    for i in order:
        if waiting_for_first and not request["ranks"][i].get("first"):
            until = time.monotonic() + 20
            while not children("T") and time.monotonic() < until:
                time.sleep(0.005)
            waiting_for_first = False
        results[i], thread = start(request, request["ranks"][i])
        threads.append(thread)
        if request.get("stagger"):
            time.sleep(request["stagger"])
    while any(t.is_alive() for t in threads):
        now = time.monotonic()
        for pid in children("T"):
            seen.setdefault(pid, now)
            if now - seen[pid] >= request.get("kill_delay", 0.3) and pid not in killed:
                os.kill(pid, 9)
                killed.append(pid)
        time.sleep(0.01)
    ended = time.monotonic()
    lingering = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            for stopped in children("T"):     # a stopped holder: kill it as promised
                if stopped not in killed:
                    os.kill(stopped, 9)
                    killed.append(stopped)
            if time.monotonic() - ended > request["linger"]:
                lingering = children()
                for child in lingering:
                    os.kill(child, 9)
                request["linger"] = 1e9
            time.sleep(0.01)
    json.dump({"ranks": results, "killed": killed, "lingering": lingering,
               "reaped_after": round(time.monotonic() - ended, 3)}, sys.stdout)


if __name__ == "__main__":
    main()
