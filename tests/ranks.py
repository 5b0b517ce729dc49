"""A small launcher for the join tests, in the role `srun` or `mpirun` plays: it starts N ranks
of one command at once, each with its own extra environment, waits for them, and reports what
each printed and returned.

- Like slurmstepd it is a child subreaper: processes the ranks leave behind (the holder) are
  reparented to it, so it reports any that outlive the ranks by more than `linger` seconds
  (and kills them), and reaps the rest.
- Fault injection: ranks run with $CHJOIN_TEST_STOP stop themselves (SIGSTOP) at a named
  point; this launcher SIGKILLs every stopped child `kill_delay` seconds after seeing it stop
  (or, with the request's `stop_signal`, sends it that signal and SIGCONT: a SIGTERM at a
  known instant).
  Ranks marked `first` start before the others, which start once a first one has stopped.
- Each rank is the leader of its own process group (its command's children and its holder are
  in it), as a job in a shell is. A rank with `"at": T` starts T seconds after the launch; the
  request's `signals`, [{"at": T, "signal": N, "rank": I | "holders", "group": bool}], are sent
  at those times: to a rank (its process group with `group`), or to every holder then alive.

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


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def start(request, rank):
    close = rank.get("close", [])
    started = time.monotonic()
    proc = subprocess.Popen(
        request["argv"] + rank.get("args", []), env=dict(request["env"], **rank.get("env", {})),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
        process_group=0, preexec_fn=(lambda: [os.close(fd) for fd in close]) if close else None)
    result = {"pid": proc.pid}
    pidfds[proc.pid] = os.pidfd_open(proc.pid)     # signals never reach a recycled pid

    def collect():
        try:
            out, err = proc.communicate(timeout=request["timeout"])
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += b"\n[ranks.py: killed at the test's timeout]"
        result.update(returncode=proc.returncode, stdout=out.decode(), stderr=err.decode(),
                      elapsed=round(time.monotonic() - started, 3))
    thread = threading.Thread(target=collect)
    thread.start()
    return result, thread


def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def send(signum, target, results, holders_signalled):
    """Send `signum` as one entry of the request's `signals` says. A rank is signalled through
    its pidfd, its process group only while the rank lives (so a pid or group id that the
    machine has since given to another process is never hit); holders are our children."""
    import signal

    if target["rank"] == "holders":
        pids = [pid for pid in children() if comm(pid) == "chjoin-holder"]
        holders_signalled.extend(pids)
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        return
    pid = results[target["rank"]]["pid"]
    try:
        if target.get("group") and start_time(pid) is not None:
            os.killpg(pid, signum)
        else:
            signal.pidfd_send_signal(pidfds[pid], signum)
    except ProcessLookupError:
        pass


pidfds = {}


def main():
    request = json.load(sys.stdin)
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    ranks = request["ranks"]
    order = sorted(range(len(ranks)), key=lambda i: (not ranks[i].get("first"),
                                                     ranks[i].get("at", 0)))
    results, threads, killed, seen, terminated = [None] * len(order), [], [], {}, []
    holders_signalled, killed_holders, holders_seen = [], [], {}
    waiting_for_first = any(r.get("first") and "CHJOIN_TEST_STOP" in r.get("env", {})
                            for r in ranks)
    began = time.monotonic()
    pending = sorted(request.get("signals", []), key=lambda s: s["at"])

    def tick():
        now = time.monotonic()
        while pending and now - began >= pending[0]["at"]:
            entry = pending.pop(0)
            if entry["rank"] == "holders" or results[entry["rank"]] is not None:
                send(entry["signal"], entry, results, holders_signalled)
        for pid in children():
            if pid not in holders_seen and comm(pid) == "chjoin-holder":
                holders_seen[pid] = start_time(pid)
        for pid in children("T"):
            seen.setdefault(pid, now)
            if now - seen[pid] >= request.get("kill_delay", 0.3) and pid not in killed:
                signum = request.get("stop_signal", 9)
                if signum != 9 and pid not in terminated:
                    terminated.append(pid)
                    os.kill(pid, signum)
                    os.kill(pid, 18)        # SIGCONT: it acts on the signal now
                    continue
                if pid in terminated:
                    continue
                if comm(pid) == "chjoin-holder":
                    killed_holders.append(pid)
                os.kill(pid, 9)
                killed.append(pid)

    for i in order:
        if waiting_for_first and not ranks[i].get("first"):
            until = time.monotonic() + 20
            while not children("T") and time.monotonic() < until:
                time.sleep(0.005)
            waiting_for_first = False
        while time.monotonic() - began < ranks[i].get("at", 0):
            tick()
            time.sleep(0.002)
        results[i], thread = start(request, ranks[i])
        threads.append(thread)
        if request.get("stagger"):
            time.sleep(request["stagger"])
    while any(t.is_alive() for t in threads) or pending:
        tick()
        time.sleep(0.005)
    ended = time.monotonic()
    lingering = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            for stopped in children("T"):     # a stopped holder: kill it as promised
                if request.get("stop_signal", 9) != 9 and stopped not in terminated:
                    terminated.append(stopped)
                    os.kill(stopped, request["stop_signal"])
                    os.kill(stopped, 18)
                elif stopped not in killed and stopped not in terminated:
                    if comm(stopped) == "chjoin-holder":
                        killed_holders.append(stopped)
                    os.kill(stopped, 9)
                    killed.append(stopped)
            if time.monotonic() - ended > request["linger"]:
                lingering = children()
                for child in lingering:
                    os.kill(child, 9)
                request["linger"] = 1e9
            time.sleep(0.01)
    # a holder we saw must be gone too, even one that is no longer our child
    while [p for p, t in holders_seen.items() if t and start_time(p) == t]:
        if time.monotonic() - ended > request["linger"]:
            lingering += [p for p, t in holders_seen.items() if t and start_time(p) == t]
            for pid in lingering:
                os.kill(pid, 9)
            break
        time.sleep(0.01)
    json.dump({"ranks": results, "killed": killed, "lingering": lingering,
               "holders_signalled": holders_signalled, "killed_holders": killed_holders,
               "terminated": terminated,
               "reaped_after": round(time.monotonic() - ended, 3)}, sys.stdout)


if __name__ == "__main__":
    main()
