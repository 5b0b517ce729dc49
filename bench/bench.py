"""chjoin and ch-run side by side, in one run, alternating: the measurements behind
docs/BENCHMARKS.md. `bench/run` sets up the machine and calls this; see its header.

    python bench/bench.py --venv V --image IMG --out DIR [--quick] [--slurm=SHAPE ...]

Every case runs each tool in turn, repetition after repetition, so that a change in the machine's
load reaches all tools alike; the report gives medians, and chjoin's ratio to ch-run (or to the
Python floor). Processes are started with posix_spawn, as a launcher would, all at once.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

SLEEP = 0.5
NULL_ACTIONS = [(os.POSIX_SPAWN_OPEN, fd, "/dev/null", os.O_RDWR, 0) for fd in (0, 1, 2)]


def spawn_all(argvs, env):
    """Start every argv at once, wait for all: (wall seconds, CPU seconds of them all, failed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    pids = [os.posix_spawnp(argv[0], argv, env, file_actions=NULL_ACTIONS) for argv in argvs]
    failed = sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in pids)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, failed


def clean_ch_run_leftovers(slurmd_pids=()):
    """ch-run leaves its semaphore and shared memory behind when ranks fail, and the next group
    on the tag then fails too: our tags (`bench`), and under srun the step's number, in each
    node's own /dev/shm (that of each slurmd's mount namespace)."""
    for name in os.listdir("/dev/shm"):
        if name.startswith(("ch-run_", "sem.ch-run_")) and "bench" in name:
            os.unlink(f"/dev/shm/{name}")
    for pid in slurmd_pids:
        subprocess.run(["nsenter", "-t", pid, "-m", "sh", "-c",
                        "rm -f /dev/shm/ch-run_shm-[0-9]* /dev/shm/sem.ch-run_sem-[0-9]*"])


def alternate(cases, reps, n=1):
    """Run {name: argv-maker(rep)} in turn, `reps` times, `n` copies at once: per case, lists of
    wall and CPU-per-process seconds and the failed processes."""
    out = {name: {"wall": [], "cpu": [], "failed": 0, "runs": 0} for name in cases}
    for rep in range(reps):
        for name, make in cases.items():
            wall, cpu, failed = spawn_all([make(rep)] * n, ENV)
            clean_ch_run_leftovers()
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu / n)
            out[name]["failed"] += failed
            out[name]["runs"] += n
    return out


def med_ms(values):
    return statistics.median(values) * 1000


# --- the cases -------------------------------------------------------------------------------

def single_launch(tools, reps):
    py = tools["python"]
    cases = {
        "ch-run IMG -- true": lambda r: [tools["ch-run"], IMAGE, "--", "true"],
        "chjoin IMG -- true": lambda r: [tools["chjoin"], IMAGE, "--", "true"],
        'python -c "import click, posix_ipc"': lambda r: [py, "-c", "import click, posix_ipc"],
        "python -c pass": lambda r: [py, "-c", "pass"],
    }
    alternate(cases, 3)                     # warm the page cache
    return alternate(cases, reps)


def join_cases(tools, n, command, tag):
    py = tools["python"]
    cases = {
        "chjoin": lambda r: [tools["chjoin"], f"--join-ct={n}", f"--join-tag=bench-{tag}-{n}-{r}",
                             IMAGE, "--", *command],
        "ch-run": lambda r: [tools["ch-run"], f"--join-ct={n}", f"--join-tag=bench-{tag}-{n}-{r}",
                             IMAGE, "--", *command],
    }
    if command[0] == "sleep":
        cases["no container"] = lambda r: command
        cases["bare Python"] = lambda r: [py, "-c", f"import os; os.execvp('sleep', "
                                          f"['sleep', '{command[1]}'])"]
    return cases


def join_sweep(tools, sizes, reps, command, tag):
    return {n: alternate(join_cases(tools, n, command, tag), reps, n) for n in sizes}


def holder_memory(tools):
    """The holder's resident memory, while it waits for the group's second rank; ch-run has none
    (the winner's own process keeps the namespaces)."""
    tag = "bench-holder"
    argv = [tools["chjoin"], "--join-ct=2", f"--join-tag={tag}", "--join-timeout=20", IMAGE,
            "--", "true"]
    first = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=ENV)
    holder = None
    for _ in range(200):
        holder = next((p for p in pids_named("chjoin-holder")
                       if f"--join-tag={tag}".encode() in cmdline(p)), None)
        if holder:
            break
        time.sleep(0.02)
    rss, proportional = (read_status(holder).get("VmRSS"), pss(holder)) if holder else (0, 0)
    second = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=ENV)
    first.wait()
    return {"rss_kib": rss, "pss_kib": proportional, "pid_found": bool(holder),
            "group_ok": first.returncode == second.returncode == 0}


def nothing_resident(tools, n=8, seconds=3):
    """Start n ranks running `sleep`; once all have exec'd, look at every rank's process: its
    comm and memory, and whether any chjoin process (rank or holder) is left."""
    argv = [tools["chjoin"], f"--join-ct={n}", "--join-tag=bench-resident", IMAGE, "--",
            "sleep", str(seconds)]
    pids = [os.posix_spawnp(argv[0], argv, ENV, file_actions=NULL_ACTIONS) for _ in range(n)]
    deadline = time.monotonic() + seconds - 0.5
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if all(comm(p) == "sleep" for p in pids) and not pids_named("chjoin-holder"):
            break
    seen = {"comms": sorted({comm(p) for p in pids}),
            "rss_kib": statistics.median(read_status(p).get("VmRSS", 0) for p in pids),
            "chjoin_processes": [p for p in all_pids() if is_chjoin(p)]}
    failed = sum(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) != 0 for p in pids)
    seen["failed"] = failed
    return seen


CPUACCT = "/sys/fs/cgroup/cpuacct/chjoin-bench"


class SlurmdCpu:
    """CPU time of everything slurmd runs (slurmstepd, the builder, the tasks), through a cgroup
    v1 cpuacct group that every slurmd is moved into: its children inherit it. None where there
    is no cpuacct hierarchy."""

    def __init__(self):
        self.path = None
        self.slurmd = pids = subprocess.run(["pgrep", "-x", "slurmd"], capture_output=True,
                                            text=True).stdout.split()
        try:
            os.makedirs(CPUACCT, exist_ok=True)
            for pid in pids:
                with open(f"{CPUACCT}/cgroup.procs", "w") as f:
                    f.write(pid)
            self.path = f"{CPUACCT}/cpuacct.usage"
        except OSError:
            pass

    def read(self):
        if self.path is None:
            return 0.0
        with open(self.path) as f:
            return int(f.read()) / 1e9


def slurm_tasks(shape):
    """The number of tasks an srun shape starts (its -n)."""
    for i, word in enumerate(shape):
        if word.startswith("-n") and word != "-n":
            return int(word[2:])
        if word == "-n":
            return int(shape[i + 1])
    return 1


def slurm_cases(tools, shape, reps, command):
    """srun of `command` four ways, alternating: bare (the baseline), `chjoin --join`, `ch-run
    --join`, and the SPANK plugin (`--chjoin-image`, when plugstack.conf names it). Wall time of
    the srun, CPU per task of all that slurmd ran, failed ranks (from each task's exit status)."""
    srun = ["srun", *shape, "--quiet"]
    cases = {
        "no container": [*srun, *command],
        "chjoin --join": [*srun, tools["chjoin"], "--join", IMAGE, "--", *command],
        "ch-run --join": [*srun, tools["ch-run"], "--join", IMAGE, "--", *command],
    }
    if os.path.exists("/etc/slurm/plugstack.conf.d/chjoin.conf"):
        cases["--chjoin-image"] = [*srun, f"--chjoin-image={IMAGE}", *command]
    tasks = slurm_tasks(shape)
    cpu = SlurmdCpu()
    out = {name: {"wall": [], "cpu": [], "failed": 0, "runs": 0} for name in cases}
    for rep in range(reps):
        for name, argv in (list(cases.items())[rep % len(cases):] +
                           list(cases.items())[:rep % len(cases)]):
            before = cpu.read()
            started = time.perf_counter()
            done = subprocess.run(argv, env=ENV, capture_output=True, text=True, cwd="/tmp")
            wall = time.perf_counter() - started
            time.sleep(0.3)                      # epilog and slurmstepd's exit
            out[name]["wall"].append(wall)
            out[name]["cpu"].append((cpu.read() - before) / tasks)
            out[name]["failed"] += failed_tasks(done.stderr, tasks) if done.returncode else 0
            out[name]["runs"] += tasks
            clean_ch_run_leftovers(cpu.slurmd)
    return out


def failed_tasks(stderr, tasks):
    """Failed tasks from srun's `tasks 0-3,5: Exited with exit code N` lines."""
    failed = 0
    for line in stderr.splitlines():
        if "Exited with exit code" not in line and "Killed" not in line:
            continue
        spec = line.split("task", 1)[1].lstrip("s ").split(":")[0]
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            try:
                failed += int(hi or lo) - int(lo) + 1
            except ValueError:
                return tasks
    return failed or tasks


def builder_startup(tools, reps):
    """The plugin's builder alone, as slurmstepd runs it (socket on fd 3, nothing else), next to
    `python -c pass` and `chjoin IMG -- true`: wall and CPU."""
    import socket

    def builder():
        ours, theirs = socket.socketpair()
        actions = NULL_ACTIONS + [(os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        argv = [tools["python"], "-I", "-S", tools["builder"], IMAGE, ""]   # as the plugin runs it
        pid = os.posix_spawn(argv[0], argv, ENV, file_actions=actions)
        theirs.close()
        data = b""
        while True:
            chunk = ours.recv(65536)
            data += chunk
            head, _, body = data.partition(b"\n")
            if not chunk or (head and len(body) >= int(head)):
                break
        ours.close()
        status = os.waitpid(pid, 0)[1]
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, status

    def spawned(argv):
        return spawn_all([argv], ENV)[:2]

    out = {name: {"wall": [], "cpu": []} for name in
           ("builder", "python -c pass", "python -I -S -c pass", "chjoin IMG -- true")}
    for _ in range(reps):
        for name in out:
            if name == "builder":
                wall, cpu, _status = builder()
            elif name == "chjoin IMG -- true":
                wall, cpu = spawned([tools["chjoin"], IMAGE, "--", "true"])
            else:
                wall, cpu = spawned([tools["python"], *name.split()[1:]])
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu)
    return out


# --- /proc -----------------------------------------------------------------------------------

def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def is_chjoin(pid):
    """A chjoin rank (its interpreter runs a script named chjoin) or a holder."""
    args = cmdline(pid).split(b"\0")
    return comm(pid) == "chjoin-holder" or any(a.endswith(b"/chjoin") for a in args[:2])


def pids_named(name):
    return [p for p in all_pids() if comm(p) == name]


def read_status(pid):
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if value.strip().endswith("kB"):
                    fields[key] = int(value.split()[0])
    except OSError:
        pass
    return fields


def pss(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return None


# --- the report ------------------------------------------------------------------------------

def machine(tools):
    def first(cmd):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                     "?")
    with open("/etc/os-release") as f:
        osname = next((line.split("=", 1)[1].strip().strip('"') for line in f
                       if line.startswith("PRETTY_NAME=")), "?")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": f"{model}, {os.cpu_count()} cores",
        "memory": f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB",
        "os": f"{osname}, Linux {platform.release()}",
        "python": first([tools["python"], "--version"]),
        "chjoin": f"{first([tools['chjoin'], '--version'])} "
                  f"(git {first(['git', '-C', root, 'rev-parse', '--short', 'HEAD'])})",
        "ch-run": f"{first([tools['ch-run'], '--version'])} (Debian charliecloud-runtime)",
        "slurm": first(["srun", "--version"]) if shutil.which("srun") else "not installed",
    }


def ratio(a, b):
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def slurm_report(results):
    """The srun tables: each way's wall overhead over plain srun, CPU per task (all that slurmd
    ran, from cpuacct), failed ranks; and the builder's start-up."""
    lines = ["", "## Under Slurm", ""]
    if not results.get("slurm"):
        return lines + ["Not measured: no Slurm cluster was up (`bench/run --slurm` starts one)."]
    ways = ["chjoin --join", "ch-run --join", "--chjoin-image"]
    lines += ["Plain srun: median wall, and CPU per task of everything slurmd ran (slurmstepd "
              "and the tasks; cgroup cpuacct). Each other cell: median wall overhead over plain "
              "srun, extra CPU per task (builder included), failed ranks. Ways alternate, "
              "rotating order. *plugin / ch-run*: the plugin's wall overhead over ch-run's.", "",
              "| srun | plain srun | `chjoin --join` | `ch-run --join` | `--chjoin-image` | "
              "plugin / ch-run | plugin / chjoin |", "|---|---|---|---|---|---|---|"]
    for shape, r in results["slurm"].items():
        if "chjoin --join" not in r:        # an older run's format
            continue
        base = med_ms(r["no container"]["wall"])
        base_cpu = med_ms(r["no container"]["cpu"])
        cells, over = [], {}
        for way in ways:
            if way not in r:
                cells.append("n/a")
                continue
            over[way] = med_ms(r[way]["wall"]) - base
            cells.append(f"{over[way]:+.0f} ms, {med_ms(r[way]['cpu']) - base_cpu:+.1f} ms, "
                         f"{r[way]['failed']}/{r[way]['runs']} failed")
        plug = over.get("--chjoin-image")
        lines.append(f"| `{shape}` | {base:.0f} ms, {base_cpu:.1f} ms | " + " | ".join(cells) + " | "
                     + (f"**{ratio(plug, over['ch-run --join'])}** | "
                        f"{ratio(plug, over['chjoin --join'])} |" if plug is not None else
                        "n/a | n/a |"))
    b = results.get("builder")
    if b:
        lines += ["", "The builder alone (`chjoin-spank-build IMG`, socket on fd 3, as slurmstepd "
                  "runs it once per node per step), and a rank's start-up:", "",
                  "| command | median wall | median CPU |", "|---|---|---|"]
        for name, v in b.items():
            lines.append(f"| `{name}` | {med_ms(v['wall']):.1f} ms | {med_ms(v['cpu']):.1f} ms |")
        pass_ = med_ms(b["python -c pass"]["wall"])
        lines += ["", f"builder / `python -c pass`: **{ratio(med_ms(b['builder']['wall']), pass_)}**"
                  f" (target ≤ 1.5x); `chjoin IMG -- true` / `python -I -S -c pass`: **"
                  f"{ratio(med_ms(b['chjoin IMG -- true']['wall']), med_ms(b['python -I -S -c pass']['wall']))}"
                  "** (target ≤ 1.5x)."]
    return lines


def report(results, quick):
    m = results["machine"]
    lines = ["# Benchmarks: chjoin and ch-run side by side", "",
             f"Written by `bench/run{' --quick' if quick else ''}` on {m['date']}; every number "
             "below comes from that one run, with the tools alternating, repetition after "
             "repetition.", "",
             "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in m.items() if k != "date"]
    s = results["single"]
    floor = med_ms(s['python -c "import click, posix_ipc"']["wall"])
    chjoin = med_ms(s["chjoin IMG -- true"]["wall"])
    chrun = med_ms(s["ch-run IMG -- true"]["wall"])
    lines += ["", f"## One launch ({len(s['chjoin IMG -- true']['wall'])} runs each)", "",
              "| command | median wall | median CPU |", "|---|---|---|"]
    for name, r in s.items():
        lines.append(f"| `{name}` | {med_ms(r['wall']):.1f} ms | {med_ms(r['cpu']):.1f} ms |")
    lines += ["", f"chjoin / Python floor (`import click, posix_ipc`): **{ratio(chjoin, floor)}** "
              f"(target ≤ 1.25x); chjoin / `python -c pass`: "
              f"{ratio(chjoin, med_ms(s['python -c pass']['wall']))}; chjoin / ch-run: "
              f"{ratio(chjoin, chrun)}."]
    sweep = results["join_sleep"]
    reps = len(next(iter(sweep.values()))["chjoin"]["wall"])
    lines += ["", f"## N ranks at once, `--join`, each running `sleep {SLEEP}` ({reps} rounds)",
              "", "Overhead: median wall time of the N ranks minus that of N plain `sleep` "
              "processes started the same way. *Bare Python* is N processes of the same "
              "interpreter that only exec `sleep`: the least any Python launcher pays.", "",
              "| N | chjoin overhead | ch-run overhead | chjoin / ch-run | bare Python overhead "
              "| chjoin / bare Python | CPU per rank: chjoin, ch-run, bare Python | failed ranks: "
              "chjoin, ch-run |", "|---|---|---|---|---|---|---|---|"]
    for n, r in sweep.items():
        base = med_ms(r["no container"]["wall"])
        over = {k: med_ms(r[k]["wall"]) - base for k in ("chjoin", "ch-run", "bare Python")}
        cpu = ", ".join(f"{med_ms(r[k]['cpu']):.1f}" for k in ("chjoin", "ch-run", "bare Python"))
        lines.append(f"| {n} | {over['chjoin']:.0f} ms | {over['ch-run']:.0f} ms | "
                     f"**{ratio(over['chjoin'], over['ch-run'])}** | {over['bare Python']:.0f} ms | "
                     f"{ratio(over['chjoin'], over['bare Python'])} | {cpu} ms | "
                     f"{r['chjoin']['failed']}/{r['chjoin']['runs']}, "
                     f"{r['ch-run']['failed']}/{r['ch-run']['runs']} |")
    sweep = results["join_true"]
    reps = len(next(iter(sweep.values()))["chjoin"]["wall"])
    lines += ["", f"## N ranks at once, `--join`, each running `true` ({reps} rounds)", "",
              "The winner's command exits at once: ch-run's peers then have no container to join.",
              "", "| N | chjoin wall | chjoin failed ranks | ch-run wall | ch-run failed ranks |",
              "|---|---|---|---|---|"]
    for n, r in sweep.items():
        lines.append(f"| {n} | {med_ms(r['chjoin']['wall']):.0f} ms | "
                     f"**{r['chjoin']['failed']}/{r['chjoin']['runs']}** | "
                     f"{med_ms(r['ch-run']['wall']):.0f} ms | "
                     f"{r['ch-run']['failed']}/{r['ch-run']['runs']} |")
    lines += slurm_report(results)
    h, rest = results["holder"], results["resident"]
    lines += ["", "## What stays resident", "",
              f"- The holder (one per container, until the last rank is in): "
              f"**{h['rss_kib'] / 1024:.1f} MiB** resident, {h['pss_kib'] / 1024:.1f} MiB "
              f"proportional (target ≤ 16 MiB); ch-run has none."
              if h["rss_kib"] else "- The holder: not found (see the run's output).",
              f"- {rest['n']} ranks running `sleep` with `--join`, once all had exec'd: their "
              f"processes are `{', '.join(rest['comms'])}` ({rest['rss_kib'] / 1024:.1f} MiB "
              f"resident each, median), and chjoin processes left on the machine: "
              f"**{len(rest['chjoin_processes'])}**."]
    lines += ["", "## Join overhead against N", "", "![join overhead](join-overhead.png)", ""]
    return "\n".join(lines)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = results["join_sleep"]
    sizes = list(sweep)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, style in (("chjoin", "o-"), ("ch-run", "s-"), ("bare Python", "^--")):
        over = [med_ms(sweep[n][name]["wall"]) - med_ms(sweep[n]["no container"]["wall"])
                for n in sizes]
        label = "bare Python (exec sleep only)" if name == "bare Python" else f"{name} --join"
        ax.plot(sizes, over, style, label=label)
    ax.set_xlabel("ranks on the node (N), started at once")
    ax.set_ylabel(f"overhead over N x `sleep {SLEEP}` (ms)")
    ax.set_title(f"Join overhead, {results['machine']['cpu']}", fontsize=9)
    ax.set_xticks(sizes)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def load(path):
    """Results written by an earlier pass of this run (JSON keeps N as a string)."""
    with open(path) as f:
        results = json.load(f)
    for sweep in ("join_sleep", "join_true"):
        results[sweep] = {int(n): r for n, r in results[sweep].items()}
    return results


def main():
    global IMAGE, ENV
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", required=True, help="the venv whose chjoin and python to time")
    parser.add_argument("--image", required=True)
    parser.add_argument("--out", required=True, help="where BENCHMARKS.md and the plot go")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--slurm", action="append", default=[], metavar="SHAPE",
                        help="an srun shape to measure, e.g. --slurm=-n16 --slurm='-N3 -n7'")
    parser.add_argument("--only-slurm", action="store_true",
                        help="measure only the srun shapes, added to OUT/benchmarks.json")
    args = parser.parse_args()
    IMAGE = args.image
    ENV = {"PATH": "/usr/bin:/bin", "USER": os.environ.get("USER") or "root",
           "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    tools = {"chjoin": f"{args.venv}/bin/chjoin", "python": f"{args.venv}/bin/python",
             "builder": f"{args.venv}/bin/chjoin-spank-build",
             "ch-run": shutil.which("ch-run") or "/usr/bin/ch-run"}
    quick = args.quick
    sizes = [8, 32, 64]

    def step(what):
        print(f"bench: {what}", flush=True)

    if args.only_slurm:
        results = load(os.path.join(args.out, "benchmarks.json"))
    else:
        results = {"machine": machine(tools), "slurm": {}}
        step("one launch")
        results["single"] = single_launch(tools, 15 if quick else 60)
        step(f"N-way join with sleep {SLEEP}, N = {sizes}")
        results["join_sleep"] = join_sweep(tools, sizes, 3 if quick else 9,
                                           ["sleep", str(SLEEP)], "sleep")
        step("N-way join with true")
        results["join_true"] = join_sweep(tools, sizes, 2 if quick else 5, ["true"], "true")
        step("holder memory, nothing resident")
        results["holder"] = holder_memory(tools)
        results["resident"] = dict(nothing_resident(tools), n=8)
    for shape in args.slurm:
        for command in (["true"], ["sleep", str(SLEEP)]):
            step(f"srun {shape} {' '.join(command)}")
            results["slurm"][f"srun {shape} {' '.join(command)}"] = slurm_cases(
                tools, shape.split(), 3 if quick else 7, command)
    if args.slurm and not args.only_slurm:
        step("the builder's start-up")
        results["builder"] = builder_startup(tools, 10 if quick else 30)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "benchmarks.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    text = report(results, quick)
    with open(os.path.join(args.out, "BENCHMARKS.md"), "w") as f:
        f.write(text)
    plot(results, os.path.join(args.out, "join-overhead.png"))
    print(text)
    print(f"\nbench: wrote {args.out}/BENCHMARKS.md, join-overhead.png, benchmarks.json")


if __name__ == "__main__":
    sys.exit(main())
