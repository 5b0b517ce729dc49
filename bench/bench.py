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
            argvs = make(rep)           # one argv for all n, or a list of n argvs
            wall, cpu, failed = spawn_all(argvs if isinstance(argvs[0], list) else [argvs] * n,
                                          ENV)
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
            "chjoin_processes": [p for p in all_pids()
                                 if is_chjoin(p) and b"--join-tag=bench-resident" in cmdline(p)]}
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


# Run inside one allocation (salloc SHAPE python -c NAMED_DRIVER ...): the first step of each
# way creates a named container, then the ways' later steps alternate, each timed alone.
NAMED_DRIVER = r"""
import json, subprocess, sys, time
chjoin, image, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
srun = ["srun", "--quiet"]
first = {"plugin": [*srun, "--chjoin-name=bench-p", f"--chjoin-image={image}", "true"],
         "cli": [*srun, chjoin, "--name=bench-c", image, "--", "true"]}
later = {"plugin, attach by name": [*srun, "--chjoin-name=bench-p", "true"],
         "plugin, build anew": [*srun, f"--chjoin-image={image}", "true"],
         "cli, attach by name": [*srun, chjoin, "--name=bench-c", "--", "true"],
         "cli, build anew": [*srun, chjoin, "--join", image, "--", "true"]}
out = {name: {"wall": [], "failed": 0} for name in later}
for argv in first.values():
    subprocess.run(argv, check=True, capture_output=True)
cases = list(later.items())
for rep in range(reps):
    for name, argv in cases[rep % len(cases):] + cases[:rep % len(cases)]:
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True)
        out[name]["wall"].append(time.perf_counter() - started)
        out[name]["failed"] += done.returncode != 0
        time.sleep(0.2)
print(json.dumps(out))
"""


def named_cases(tools, shape, reps):
    """The second step of a job: attaching to a named container (`--chjoin-name`, `chjoin
    --name`) against building anew (`--chjoin-image`, `chjoin --join`), in one allocation of
    `shape`; the job's end (the epilog) ends the names. None without the plugin."""
    if not os.path.exists("/etc/slurm/plugstack.conf.d/chjoin.conf"):
        return None
    done = subprocess.run(["salloc", *shape, tools["python"], "-c", NAMED_DRIVER,
                           tools["chjoin"], IMAGE, str(reps)], env=ENV, capture_output=True,
                          text=True, cwd="/tmp")
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def named_report(results):
    """One row: a later step's wall time attaching by name against building anew, as a ratio,
    through the plugin and the command line."""
    lines = []
    for shape, r in (results.get("named") or {}).items():
        if not r:
            continue
        if "error" in r:
            lines += ["", f"Named containers (`srun {shape}`): not measured: {r['error']}"]
            continue
        lines += ["", f"Named containers: a later step of a job (`srun {shape} true`) attaching "
                  "by name to the container its first step created, against building one anew "
                  "(median wall; the ways alternate within one allocation).", "",
                  "| way | attach by name | build anew | attach / anew |", "|---|---|---|---|"]
        for way, anew in (("plugin", "`--chjoin-image`"), ("cli", "`chjoin --join`")):
            attach, built = r[f"{way}, attach by name"], r[f"{way}, build anew"]
            label = "`--chjoin-name`" if way == "plugin" else "`chjoin --name`"
            failed = attach["failed"] + built["failed"]
            lines.append(f"| {label} vs {anew} | {med_ms(attach['wall']):.0f} ms | "
                         f"{med_ms(built['wall']):.0f} ms | **"
                         f"{ratio(med_ms(attach['wall']), med_ms(built['wall']))}**"
                         f"{f' ({failed} failed)' if failed else ''} |")
    return lines


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


# --- MPI between two ranks of a node --------------------------------------------------------

# Open MPI as root; MPICH through mpi4py's MPICH build (bench/run links libmpi.so.12).
MPI_FLAVOURS = {
    "Open MPI": {"mpirun": "mpirun",
                 "env": {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"},
                 # separate user namespaces: no CMA single copy (else it hangs at 4 MiB)
                 "separate": {"OMPI_MCA_btl_vader_single_copy_mechanism": "none"}},
    "MPICH": {"mpirun": "mpirun.mpich",
              "env": {"MPI4PY_MPIABI": "mpich", "LD_LIBRARY_PATH": "{mpi_dir}/mpich-abi"},
              # separate user namespaces: no CMA (aborts at 16 KiB), no /proc/PID/fd links
              "separate": {"UCX_TLS": "self,sysv,posix", "UCX_POSIX_USE_PROC_LINK": "n"}},
}
PINGPONG_SIZES = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20]   # reported
# Each launch gets a /dev/shm of its own (a tmpfs in a private mount namespace): whatever a
# failed or killed run leaves there (vader segments, ucx_shm_posix_*, chjoin's names) goes
# with it, and never meets anyone else's.
PRIVATE_SHM = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs -o mode=1777 tmpfs /dev/shm && exec "$@"', "sh"]


def mpi_ways(tools, flavour, with_etc_openmpi=True):
    """{way: (argv before the Python command, extra environment)}: on the host; both ranks in
    one container (--join); each rank in a container of its own, with the settings it needs."""
    binds = ["-b", "/usr", "-b", "/etc/ld.so.cache", "-b", "/etc/alternatives",
             "-b", tools["venv"], "-b", MPI_DIR]
    if with_etc_openmpi:
        binds += ["-b", "/etc/openmpi"]         # Debian's openmpi-mca-params.conf (see README)
    return {
        "host": ([], {}),
        "join": ([tools["chjoin"], "--join", "--join-ct=2", *binds, HOST_IMAGE, "--"], {}),
        "separate": ([tools["chjoin"], *binds, HOST_IMAGE, "--"],
                     MPI_FLAVOURS[flavour]["separate"]),
    }


def mpi_run(flavour, prefix, command, extra_env, timeout):
    """`mpirun -n 2 PREFIX COMMAND` with a private /dev/shm: (outcome, seconds, stdout, stderr);
    outcome is "ok", "failed" or "hung" (killed, with all its processes, at `timeout`)."""
    spec = MPI_FLAVOURS[flavour]
    env = {**ENV, **{k: v.format(mpi_dir=MPI_DIR) for k, v in spec["env"].items()}, **extra_env}
    argv = [*PRIVATE_SHM, spec["mpirun"], "-n", "2", *prefix, *command]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, cwd="/")
    try:
        out, err = proc.communicate(timeout=timeout)
        outcome = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        outcome = "hung"
    wall = time.perf_counter() - started
    reap(kill=outcome == "hung")
    return outcome, wall, out, err


def become_subreaper():
    """Processes a launch leaves (a holder, hydra's proxies in their own process groups) are
    reparented to us rather than to init, so that `reap` can find them."""
    import ctypes
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)      # PR_SET_CHILD_SUBREAPER


def reap(kill):
    """Reap the children reparented to us; with `kill`, SIGKILL them first, and their children
    as they are reparented in turn, until none is left (at most 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        mine = [p for p in all_pids() if parent(p) == os.getpid()]
        for pid in mine if kill else []:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        if not kill or not mine or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def pingpong_args(quick):
    """bench/pingpong.py from 64 KiB (quick) or 4 KiB to 4 MiB."""
    if quick:
        return ["-m", str(64 << 10), "-n", str(4 << 20), "-l", "300", "--loop-huge", "50"]
    return ["-m", str(4 << 10), "-n", str(4 << 20), "-l", "1000", "--loop-huge", "200"]


def parse_pingpong(out):
    """{size: (MB/s of the median round trip, MB/s of the mean)} from bench/pingpong.py."""
    found = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0].isdigit():
            found[int(fields[0])] = (float(fields[1]), float(fields[2]))
    return found


def why(err):
    """The line of a failed MPI run's stderr that says what went wrong, if any."""
    lines = [line.strip() for line in err.splitlines()]
    for needle in ("process_vm_readv", "Shared memory error", "different user namespaces",
                   "MPI_ERR", "Error", "error:"):
        at = next((i for i, line in enumerate(lines) if needle in line), None)
        if at is not None:
            line = lines[at]
            if at and line[:1].islower():           # Open MPI wraps its messages
                line = f"{lines[at - 1]} {line}"
            return line if len(line) <= 160 else "..." + line[-157:]
    return ""


def pingpong(tools, flavour, ways, reps, quick, timeout):
    """Alternating repetitions of each way: per way, {size: [MB/s per run]} (from the median
    round trip; "mbps_mean": from the mean) and the runs that failed or hung (with the largest
    size they completed and why)."""
    command = [tools["python"], f"{MPI_DIR}/pingpong.py", *pingpong_args(quick)]
    out = {way: {"mbps": {}, "mbps_mean": {}, "runs": 0, "bad": []} for way in ways}
    for _ in range(reps):
        for way, (prefix, extra) in ways.items():
            outcome, _, stdout, stderr = mpi_run(flavour, prefix, command, extra, timeout)
            sizes = parse_pingpong(stdout)
            for size, (median, mean) in sizes.items():
                out[way]["mbps"].setdefault(size, []).append(median)
                out[way]["mbps_mean"].setdefault(size, []).append(mean)
            out[way]["runs"] += 1
            if outcome != "ok":
                out[way]["bad"].append({"outcome": outcome, "last_size": max(sizes, default=0),
                                        "why": why(stderr)})
    return out


def mpi_probe(tools, ways, reps, timeout):
    """bench/mpi_probe.py under Open MPI's mpirun -n 2, each way in turn: wall seconds of the
    whole launch and what the ranks saw (CMA, pidfd_getfd, libfabric, pml)."""
    command = [tools["python"], f"{MPI_DIR}/mpi_probe.py"]
    out = {way: {"wall": [], "seen": [], "bad": []} for way in ways}
    for _ in range(reps):
        for way, (prefix, extra) in ways.items():
            outcome, wall, stdout, stderr = mpi_run("Open MPI", prefix, command, extra, timeout)
            lines = [l for l in stdout.splitlines() if l.startswith("{")]
            if outcome == "ok" and lines:
                out[way]["wall"].append(wall)
                out[way]["seen"].append(json.loads(lines[-1]))
            else:
                out[way]["bad"].append({"outcome": outcome, "why": why(stderr)})
    return out


def mpi_available(tools, flavour):
    """None if `flavour` can run here, else why not."""
    spec = MPI_FLAVOURS[flavour]
    if not shutil.which(spec["mpirun"]) or not shutil.which("unshare"):
        return f"{spec['mpirun']} or unshare not installed"
    if not HOST_IMAGE:
        return "no host image (bench/run builds one)"
    env = {**ENV, **{k: v.format(mpi_dir=MPI_DIR) for k, v in spec["env"].items()}}
    done = subprocess.run([tools["python"], "-c", "from mpi4py import MPI"], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"mpi4py fails: {why(done.stderr) or done.stderr[-200:]}"
    return None


def mpi_cases(tools, quick, step):
    """The pingpong for each MPI, the probe, and (full runs) what separate containers do with
    the defaults."""
    reps, timeout = (3, 20) if quick else (11, 40)
    become_subreaper()
    results = {"pingpong": {}, "skipped": {}, "defaults": {}, "probe": None,
               "reps": reps, "timeout": timeout, "load": [os.getloadavg()[0]]}
    for flavour in MPI_FLAVOURS:
        missing = mpi_available(tools, flavour)
        if missing:
            results["skipped"][flavour] = missing
            continue
        ways = mpi_ways(tools, flavour)
        if flavour == "Open MPI" and not quick:
            ways["join, no /etc/openmpi"] = mpi_ways(tools, flavour, False)["join"]
        step(f"{flavour} pingpong, {' / '.join(ways)}, {reps} rounds")
        results["pingpong"][flavour] = pingpong(tools, flavour, ways, reps, quick, timeout)
        if not quick:
            step(f"{flavour} pingpong in separate containers with the defaults, 3 runs")
            prefix = mpi_ways(tools, flavour)["separate"][0]
            results["defaults"][flavour] = pingpong(tools, flavour, {"separate": (prefix, {})},
                                                    3, quick, 15)["separate"]
    if "Open MPI" not in results["skipped"]:
        ways = mpi_ways(tools, "Open MPI")
        ways["join, no /etc/openmpi"] = mpi_ways(tools, "Open MPI", False)["join"]
        step("Open MPI probe: CMA, pidfd_getfd, libfabric, pml, launch time")
        results["probe"] = mpi_probe(tools, ways, 2 if quick else 10, timeout)
    results["load"].append(os.getloadavg()[0])
    return results


# --- SquashFS ----------------------------------------------------------------------------------

READ_BIG = "cat /data/big > /dev/null"      # 40 MB, in every rank
READ_TREE = "ls -R /tree > /dev/null"      # 16 000 entries, in every rank


def squashfs_cases(tools, sqfs, n, script, first=None):
    """n ranks of `sh -c script` on SquashFS image `sqfs`: chjoin and ch-run, each with --join
    (chjoin: one mount; ch-run: one mount whose server is the winner) and without (n mounts);
    with `first`, the first rank started runs that instead, and only --join is measured."""
    def join(tool, r):
        argv = [tools[tool], f"--join-ct={n}", f"--join-tag=bench-sq-{n}-{r}", sqfs, "--"]
        if first is None:
            return [*argv, "sh", "-c", script]
        return [[*argv, "sh", "-c", first]] + [[*argv, "sh", "-c", script]] * (n - 1)
    cases = {"chjoin --join": lambda r: join("chjoin", r),
             "ch-run --join": lambda r: join("ch-run", r)}
    if first is None:
        cases["chjoin"] = lambda r: [tools["chjoin"], sqfs, "--", "sh", "-c", script]
        cases["ch-run"] = lambda r: [tools["ch-run"], sqfs, "--", "sh", "-c", script]
    return cases


def fuse_servers():
    """{pid: cpu ticks} of the processes serving a FUSE mount: squashfuse_ll (chjoin's), and the
    ch-run processes that hold /dev/fuse (ch-run 0.31 serves SquashFS itself, in the process
    that forks the container's; the child, which holds it a moment, is not counted)."""
    found = {}
    for pid in all_pids():
        name = comm(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            if fields[0] in ("Z", "X"):       # exited; its parent has not reaped it yet
                continue
            if name == "ch-run":
                if comm(int(fields[1])) == "ch-run" or not any(
                        os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse"
                        for fd in os.listdir(f"/proc/{pid}/fd")):
                    continue
            elif name != "squashfuse_ll":
                continue
            found[pid] = int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return found


def page_cache_kib():
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Cached:"))


def observe(argvs):
    """Start argvs at once and watch them, untimed: FUSE servers started (and the CPU each used,
    as last seen), and the page cache's peak growth over what it held before."""
    before = page_cache_kib()
    servers, peak = {}, before
    pids = [os.posix_spawnp(argv[0], argv, ENV, file_actions=NULL_ACTIONS) for argv in argvs]
    failed = 0
    while pids:
        servers.update(fuse_servers())
        peak = max(peak, page_cache_kib())
        for pid in list(pids):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                failed += os.waitstatus_to_exitcode(status) != 0
                pids.remove(pid)
        time.sleep(0.01)
    clean_ch_run_leftovers()
    hz = os.sysconf("SC_CLK_TCK")
    return {"servers": len(servers), "server_cpu_ms": sorted(t * 1000 / hz
                                                             for t in servers.values()),
            "page_cache_mib": (peak - before) / 1024, "failed": failed}


def squashfs(tools, sqfs, quick):
    """SquashFS: one launch; 32 ranks reading one 40 MB file (and, with --join, 31 reading it
    after the first has exited); 32 ranks listing 16 000 entries."""
    n = 32
    single = {"ch-run IMG.sqfs -- true": lambda r: [tools["ch-run"], sqfs, "--", "true"],
              "chjoin IMG.sqfs -- true": lambda r: [tools["chjoin"], sqfs, "--", "true"]}
    alternate(single, 2)
    out = {"single": alternate(single, 10 if quick else 40), "n": n}
    reps = 2 if quick else 5
    out["after_exit"] = alternate(squashfs_cases(tools, sqfs, n, f"sleep 0.5; {READ_BIG}",
                                                 first="true"), reps, n)
    for key, script in (("read", READ_BIG), ("tree", READ_TREE)):
        out[key] = alternate(squashfs_cases(tools, sqfs, n, script), reps, n)
        # all n containers alive at once, for the servers and the page cache they hold
        watch = squashfs_cases(tools, sqfs, n, f"{script}; sleep 1")
        out[f"{key}_observed"] = {name: observe([make(f"o{key}")] * n)
                                  for name, make in watch.items()}
        alone = {"chjoin, 1 rank": lambda r, s=script: [tools["chjoin"], sqfs, "--", "sh", "-c",
                                                        s]}
        out[f"{key}_one"] = alternate(alone, reps)["chjoin, 1 rank"]
    return out


# --- /proc -----------------------------------------------------------------------------------

def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


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
            return (done.stdout.strip() or done.stderr.strip()).splitlines()[0]
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
    lines += named_report(results)
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
    if results.get("load"):
        lines.append(f"| load average (1 min), start and end of the run | "
                     f"{', '.join(f'{x:.1f}' for x in results['load'])} |")
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
    lines += mpi_report(results.get("mpi"))
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
    lines += squashfs_report(results.get("squashfs"))
    lines += ["", "## Join overhead against N", "", "![join overhead](join-overhead.png)", ""]
    return "\n".join(lines)


def size_name(size):
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


def bad_runs(r):
    """'0/11', or '2/11 (hung after 2 MiB; failed after 8 KiB: why)'."""
    text = f"{len(r['bad'])}/{r['runs']}"
    if r["bad"]:
        what = sorted({f"{b['outcome']} after {size_name(b['last_size'])}"
                       if b["last_size"] else b["outcome"] for b in r["bad"]})
        reasons = sorted({b["why"] for b in r["bad"] if b["why"]})
        text += f" ({', '.join(what)}{': `' + reasons[0] + '`' if reasons else ''})"
    return text


def mpi_report(mpi):
    lines = ["", "## MPI between two ranks of a node: what joining buys", ""]
    if not mpi:
        return lines + ["Not measured (an earlier run, or no MPI here)."]
    load = " to ".join(f"{x:.1f}" for x in mpi.get("load", []))
    lines += [f"`mpirun -n 2` (each launch with a `/dev/shm` of its own) running "
              f"`bench/pingpong.py` three ways, alternating, {mpi['reps']} rounds: on the host; "
              "both ranks in one container (`chjoin --join`); each rank in a container of its "
              "own (`chjoin` without `--join`, with the settings it needs not to hang or abort, "
              "below). The image is empty mount points for the host's `/usr` (the benchmark "
              "venv and `/etc/openmpi` are bound too), so all three run the same Python, mpi4py "
              "and MPI. `bench/pingpong.py` is `python -m mpi4py.bench pingpong`'s exchange, "
              "timing each round trip: bandwidth below is from the median round trip of a run, "
              "GB/s, the median over the rounds (mpi4py.bench's mean round trip, in "
              "`benchmarks.json` as `mbps_mean`, mostly measures the machine's load when two "
              "ranks busy-poll on 2 cores). Every run has a "
              f"{mpi['timeout']} s timeout." + (f" Load average during these runs: {load}."
                                                if load else "")]
    for flavour, reason in mpi["skipped"].items():
        lines += ["", f"{flavour}: not measured: {reason}."]
    for flavour, ways in mpi["pingpong"].items():
        names = list(ways)
        extra = [n for n in names if n not in ("host", "join", "separate")]
        lines += ["", f"### {flavour} ({MPI_FLAVOURS[flavour]['mpirun']})", "",
                  "| message | host | `--join` | separate containers | **join / separate** "
                  "| join / host |" + "".join(f" {n} |" for n in extra),
                  "|---|---|---|---|---|---|" + "---|" * len(extra)]

        def gbps(way, size):
            values = ways[way]["mbps"].get(size) or ways[way]["mbps"].get(str(size))
            return statistics.median(values) / 1000 if values else None

        def cell(value):
            return f"{value:.2f}" if value is not None else "–"

        for size in PINGPONG_SIZES:
            host, join, sep = (gbps(w, size) for w in ("host", "join", "separate"))
            if host is None and join is None:
                continue
            row = (f"| {size_name(size)} | {cell(host)} | {cell(join)} | {cell(sep)} | "
                   f"**{ratio(join, sep) if join and sep else '–'}** | "
                   f"{ratio(join, host) if join and host else '–'} |")
            row += "".join(f" {cell(gbps(n, size))} |" for n in extra)
            lines.append(row)
        lines.append("| failed or hung runs | " + " | ".join(
            bad_runs(ways[w]) for w in ("host", "join", "separate")) + " | | |" +
            "".join(f" {bad_runs(ways[n])} |" for n in extra))
        settings = ", ".join(f"`{k}={v}`" for k, v in MPI_FLAVOURS[flavour]["separate"].items())
        lines += ["", f"Separate containers ran with {settings}."]
        if flavour in mpi["defaults"]:
            lines += [f"Without {'it' if len(MPI_FLAVOURS[flavour]['separate']) == 1 else 'them'}"
                      f" (the defaults), separate containers: failed or hung in "
                      f"**{bad_runs(mpi['defaults'][flavour])}** runs."]
    probe = mpi["probe"]
    if probe:
        lines += ["", "### What the ranks get (Open MPI, `bench/mpi_probe.py`)", "",
                  "CMA: rank 0 reads rank 1's memory with `process_vm_readv(2)`, the single copy "
                  "of Open MPI's vader and UCX's cma. *pidfd_getfd*: rank 0 takes a descriptor "
                  "of rank 1 with `pidfd_open(2)` + `pidfd_getfd(2)`, how UCX's CUDA-VMM path and "
                  "Level Zero pass GPU memory handles (the same kernel check as CMA; "
                  "`bench/pidfd_probe.py`), and the time of one take, median of 1000. *pickled*: "
                  "mpi4py's `comm.sendrecv` (it receives by `MPI_Mprobe`). Launch: the whole "
                  "`mpirun -n 2`, median.", "",
                  "| ranks | CMA | pidfd_getfd | one take | libfabric loaded | pml | pickled "
                  "sendrecv | launch | failed or hung |", "|---|---|---|---|---|---|---|---|---|"]
        for way, r in probe.items():
            seen = r["seen"]

            def values(key):
                shown = {"yes" if v is True else "no" if v is False else
                         " ".join(v) if isinstance(v, list) else str(v)
                         for v in (s[key] for s in seen)}
                return ", ".join(sorted(shown)) or "–"
            wall = f"{med_ms(r['wall']) / 1000:.2f} s" if r["wall"] else "–"
            takes = sorted(s["pidfd_us"] for s in seen if s.get("pidfd_us") is not None)
            take = f"{takes[len(takes) // 2]:.1f} µs" if takes else "–"
            lines.append(f"| {way} | {values('cma')} | {values('pidfd_getfd')} | {take} | "
                         f"{values('libfabric')} | "
                         f"{values('pml')} | {values('pickled')} | {wall} | "
                         f"{len(r['bad'])}/{len(r['bad']) + len(seen)} |")
    return lines


def squashfs_report(sq):
    """The SquashFS section: one launch, then 32 ranks reading a 40 MB file and listing a tree
    of 16 000 entries, each with and without --join, chjoin and ch-run."""
    lines = ["", "## SquashFS images", ""]
    if not sq:
        return lines + ["Not measured (no SquashFS image: `bench/run` builds one)."]
    s = sq["single"]
    lines += [f"One launch ({len(s['chjoin IMG.sqfs -- true']['wall'])} runs each): "
              + "; ".join(f"`{name}` {med_ms(r['wall']):.1f} ms wall, {med_ms(r['cpu']):.1f} ms "
                          "CPU" for name, r in s.items()) + ".", ""]
    n = sq["n"]
    after = sq["after_exit"]
    lines += [f"{n} ranks with `--join`, the first running `true`, the other {n - 1} reading the "
              "image's 40 MB file half a second later, while the first has exited: failed ranks "
              + ", ".join(f"{name} **{r['failed']}/{r['runs']}**" for name, r in after.items())
              + " (ch-run 0.31's server is its winner: its peers die of SIGBUS).", ""]
    for key, what in (("read", f"{n} ranks at once, each reading the same 40 MB file "
                               "(`cat /data/big`)"),
                      ("tree", f"{n} ranks at once, each listing a tree of 16 000 entries "
                               "(`ls -R /tree`)")):
        timed, seen = sq[key], sq[f"{key}_observed"]
        one = med_ms(sq[f"{key}_one"]["wall"])
        reps = len(next(iter(timed.values()))["wall"])
        lines += [f"### {what}", "",
                  f"Wall and failures: {reps} timed rounds (medians). FUSE servers, their CPU "
                  "and the page cache: one more round in which every rank then sleeps 1 s, so "
                  f"that all {n} containers are alive at once. One rank alone, chjoin: "
                  f"{one:.0f} ms.", "",
                  "| | wall | failed ranks | FUSE servers | their CPU, each (max) "
                  "| page cache added (peak) |", "|---|---|---|---|---|---|"]
        for name, r in timed.items():
            w = seen.get(name) or {"servers": 0, "server_cpu_ms": [0], "page_cache_mib": 0}
            lines.append(f"| {name} | {med_ms(r['wall']):.0f} ms | {r['failed']}/{r['runs']} | "
                         f"{w['servers']} | {max(w['server_cpu_ms'] or [0]):.0f} ms | "
                         f"{w['page_cache_mib']:.0f} MiB |")
        lines.append("")
    return lines


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
    global IMAGE, ENV, HOST_IMAGE, MPI_DIR
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", required=True, help="the venv whose chjoin and python to time")
    parser.add_argument("--image", required=True)
    parser.add_argument("--out", required=True, help="where BENCHMARKS.md and the plot go")
    parser.add_argument("--host-image", help="an image of mount points for the host's /usr "
                        "(the MPI cases; bench/run builds it)")
    parser.add_argument("--mpi-dir", help="bound into the host image: mpi_probe.py, pingpong.py, "
                        "mpich-abi/libmpi.so.12")
    parser.add_argument("--no-mpi", action="store_true", help="skip the MPI cases")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--slurm", action="append", default=[], metavar="SHAPE",
                        help="an srun shape to measure, e.g. --slurm=-n16 --slurm='-N3 -n7'")
    parser.add_argument("--squashfs", metavar="IMG.sqfs",
                        help="a SquashFS image with /data/big (40 MB) and /tree (16 000 entries)")
    parser.add_argument("--only-sq", action="store_true",
                        help="measure only the SquashFS cases (written to OUT/squashfs.json)")
    parser.add_argument("--only-slurm", action="store_true",
                        help="measure only the srun shapes, added to OUT/benchmarks.json")
    args = parser.parse_args()
    IMAGE = args.image
    HOST_IMAGE, MPI_DIR = args.host_image, args.mpi_dir
    ENV = {"PATH": "/usr/bin:/bin", "USER": os.environ.get("USER") or "root",
           "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    tools = {"chjoin": f"{args.venv}/bin/chjoin", "python": f"{args.venv}/bin/python",
             "builder": f"{args.venv}/bin/chjoin-spank-build",
             "ch-run": shutil.which("ch-run") or "/usr/bin/ch-run", "venv": args.venv}
    quick = args.quick
    sizes = [8, 32, 64]

    def step(what):
        print(f"bench: {what}", flush=True)

    if args.only_sq:
        results = {"squashfs": squashfs(tools, args.squashfs, quick)}
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "squashfs.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
        print("\n".join(squashfs_report(results["squashfs"])))
        return
    if args.only_slurm:
        results = load(os.path.join(args.out, "benchmarks.json"))
    else:
        results = {"machine": machine(tools), "slurm": {}, "load": [os.getloadavg()[0]]}
        step("one launch")
        results["single"] = single_launch(tools, 15 if quick else 60)
        step(f"N-way join with sleep {SLEEP}, N = {sizes}")
        results["join_sleep"] = join_sweep(tools, sizes, 3 if quick else 9,
                                           ["sleep", str(SLEEP)], "sleep")
        step("N-way join with true")
        results["join_true"] = join_sweep(tools, sizes, 2 if quick else 5, ["true"], "true")
        if args.squashfs:
            step("SquashFS: one launch, 32 ranks reading 40 MB, 32 ranks listing 16 000 entries")
            results["squashfs"] = squashfs(tools, args.squashfs, quick)
        step("holder memory, nothing resident")
        results["holder"] = holder_memory(tools)
        results["resident"] = dict(nothing_resident(tools), n=8)
        if not args.no_mpi:
            results["mpi"] = mpi_cases(tools, quick, step)
    for shape in args.slurm:
        for command in (["true"], ["sleep", str(SLEEP)]):
            step(f"srun {shape} {' '.join(command)}")
            results["slurm"][f"srun {shape} {' '.join(command)}"] = slurm_cases(
                tools, shape.split(), 3 if quick else 7, command)
    for shape in args.slurm:
        if shape == "-n16":
            step(f"named containers: a later step attaching by name, srun {shape}")
            results.setdefault("named", {})[shape] = named_cases(tools, shape.split(),
                                                                 3 if quick else 9)
    if args.slurm and not args.only_slurm:
        step("the builder's start-up")
        results["builder"] = builder_startup(tools, 10 if quick else 30)
    if not args.only_slurm:
        results["load"].append(os.getloadavg()[0])
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
