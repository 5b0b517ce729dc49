"""Who is in my group: the tag and the size of the peer group a rank joins, and their sources.

A group is every rank of one launch on one node. Its *tag* names the launch (job, step,
application), so that two launches never share a container; its *count* is how many ranks of
that launch run on this node. Both come from the command line or from the environment the
launcher set; each comes with the place it was read, which `-v` prints.

When several launchers are present, the innermost one wins: `mpirun` inside an `sbatch` job
starts its ranks through a single-task Slurm step per node, so the Slurm variables the ranks
inherit describe the daemons, not the ranks. MPI launchers are therefore asked first, then the
resource managers, then ch-run's last resort (`SLURM_CPUS_ON_NODE`), then the parent pid.

Pure functions over an environment mapping; the caller supplies the facts about this process
(parent pid, host name, the hydra proxy's pid) that are not in the environment.
"""

from chjoin.log import Fatal
from chjoin.value import Value


class Group(Value):
    tag: str
    tag_source: str
    count: int
    count_source: str


class Process(Value):
    """What this process knows of itself: the parent pid, the host name, the hydra proxy."""
    ppid: int
    hostname: str = ""
    hydra_proxy: int = 0      # pid of the nearest hydra_pmi_proxy ancestor, or 0


class _Found:
    """One launcher's answer: count and tag (either may be None), with their sources."""

    def __init__(self, count=None, count_source="", tag=None, tag_source=""):
        self.count, self.count_source = count, count_source
        self.tag, self.tag_source = tag, tag_source


def parse_int(text, name, whole=True):
    """An integer with ch-run's messages for the ways it can be wrong; `whole=False` accepts
    trailing text, as ch-run does for counts read from the environment."""
    digits = text.strip()
    sign = digits[:1] if digits[:1] in "+-" else ""
    body = digits[len(sign):]
    n = len(body) - len(body.lstrip("0123456789"))
    if n == 0:
        raise Fatal(f"{name}: no digits found")
    if whole and body[n:]:
        raise Fatal(f"{name}: extra characters after digits")
    value = int(sign + body[:n])
    if not -2**31 <= value < 2**31:
        raise Fatal(f"{name}: out of range")
    return value


def expand_tasks_per_node(text):
    """Slurm's compressed list `3,2(x2)` as one count per node: [3, 2, 2]."""
    counts = []
    for item in text.split(","):
        count, paren, times = item.strip().partition("(x")
        times, close, rest = times.partition(")") if paren else ("1", ")", "")
        if not (count.isdecimal() and times.isdecimal() and close and not rest):
            raise Fatal(f"SLURM_STEP_TASKS_PER_NODE: can't parse {text!r}")
        counts += [int(count)] * int(times)
    return counts


def _open_mpi(env, _proc):
    if "OMPI_COMM_WORLD_LOCAL_SIZE" not in env:
        return None
    found = _Found(parse_int(env["OMPI_COMM_WORLD_LOCAL_SIZE"], "OMPI_COMM_WORLD_LOCAL_SIZE",
                               whole=False), "Open MPI: OMPI_COMM_WORLD_LOCAL_SIZE")
    if env.get("PMIX_NAMESPACE"):
        found.tag, found.tag_source = f"ompi.{env['PMIX_NAMESPACE']}", "Open MPI: PMIX_NAMESPACE"
    elif env.get("OMPI_MCA_orte_hnp_uri"):
        job = env["OMPI_MCA_orte_hnp_uri"].split(";")[0].split(".")[0]
        found.tag, found.tag_source = f"ompi.{job}", "Open MPI: OMPI_MCA_orte_hnp_uri"
    return found


def _hydra(env, proc):
    if "MPI_LOCALNRANKS" not in env:
        return None
    found = _Found(parse_int(env["MPI_LOCALNRANKS"], "MPI_LOCALNRANKS", whole=False),
                   "MPICH Hydra: MPI_LOCALNRANKS")
    if proc.hydra_proxy:
        found.tag, found.tag_source = f"hydra.{proc.hydra_proxy}", "MPICH Hydra: proxy pid"
    return found


def _pals(env, _proc):
    if "PALS_LOCAL_SIZE" not in env:
        return None
    found = _Found(parse_int(env["PALS_LOCAL_SIZE"], "PALS_LOCAL_SIZE", whole=False),
                   "Cray PALS: PALS_LOCAL_SIZE")
    if env.get("PALS_APID"):
        found.tag, found.tag_source = f"pals.{env['PALS_APID']}", "Cray PALS: PALS_APID"
    return found


def _pmix(env, _proc):
    if "PMIX_LOCAL_SIZE" not in env:
        return None
    found = _Found(parse_int(env["PMIX_LOCAL_SIZE"], "PMIX_LOCAL_SIZE", whole=False),
                   "PMIx: PMIX_LOCAL_SIZE")
    if env.get("PMIX_NAMESPACE"):
        found.tag, found.tag_source = f"pmix.{env['PMIX_NAMESPACE']}", "PMIx: PMIX_NAMESPACE"
    return found


def _flux(env, _proc):
    """Flux tells the job's size and node count, not this node's share: exact on one node, and
    an even spread is assumed on several (an uneven one is refused rather than guessed)."""
    if not env.get("FLUX_JOB_ID"):
        return None
    found = _Found(tag=f"flux.{env['FLUX_JOB_ID']}", tag_source="Flux: FLUX_JOB_ID")
    if "FLUX_JOB_SIZE" in env:
        size = parse_int(env["FLUX_JOB_SIZE"], "FLUX_JOB_SIZE", whole=False)
        nodes = parse_int(env.get("FLUX_JOB_NNODES", "1"), "FLUX_JOB_NNODES", whole=False)
        if nodes == 1:
            found.count, found.count_source = size, "Flux: FLUX_JOB_SIZE (one node)"
        elif nodes > 1 and size % nodes == 0:
            found.count = size // nodes
            found.count_source = "Flux: FLUX_JOB_SIZE / FLUX_JOB_NNODES (even spread)"
        else:
            raise Fatal(f"join: Flux job of {size} tasks on {nodes} nodes: the per-node count is "
                        "unknown; give --join-ct")
    return found


def _slurm(env, _proc):
    """A Slurm step: the tag names job, step and heterogeneous component; the count is this
    node's entry of SLURM_STEP_TASKS_PER_NODE, never the first node's."""
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID"))
    job = env.get("SLURM_JOB_ID", env.get("SLURM_JOBID"))
    if step is None or not job:
        return None
    tag = f"slurm.{job}.{step}"
    if env.get("SLURM_HET_JOB_OFFSET"):
        tag += f".het{env['SLURM_HET_JOB_OFFSET']}"
    found = _Found(tag=tag, tag_source="Slurm: SLURM_JOB_ID, SLURM_STEP_ID")
    if "SLURM_STEP_TASKS_PER_NODE" in env:
        counts = expand_tasks_per_node(env["SLURM_STEP_TASKS_PER_NODE"])
        node = parse_int(env.get("SLURM_NODEID", "0"), "SLURM_NODEID")
        if not 0 <= node < len(counts):
            raise Fatal(f"SLURM_NODEID {node} is outside SLURM_STEP_TASKS_PER_NODE "
                        f"({env['SLURM_STEP_TASKS_PER_NODE']})")
        found.count = counts[node]
        found.count_source = f"Slurm: SLURM_STEP_TASKS_PER_NODE, node {node}"
    return found


def _lsf(env, proc):
    if not env.get("LSB_JOBID"):
        return None
    tag = f"lsf.{env['LSB_JOBID']}"
    if env.get("LSB_JOBINDEX", "0") not in ("", "0"):
        tag += f".{env['LSB_JOBINDEX']}"
    found = _Found(tag=tag, tag_source="LSF: LSB_JOBID")
    words = env.get("LSB_MCPU_HOSTS", "").split()
    short = proc.hostname.split(".")[0]
    for host, count in zip(words[::2], words[1::2]):
        if host == proc.hostname or host.split(".")[0] == short:
            found.count = parse_int(count, "LSB_MCPU_HOSTS")
            found.count_source = f"LSF: LSB_MCPU_HOSTS, host {host}"
            break
    return found


def _last_resort(env, _proc):
    """ch-run's last resort for the count: the CPUs Slurm gave this node."""
    if "SLURM_CPUS_ON_NODE" not in env:
        return None
    found = _Found(parse_int(env["SLURM_CPUS_ON_NODE"], "SLURM_CPUS_ON_NODE", whole=False),
                   "SLURM_CPUS_ON_NODE")
    job = env.get("SLURM_JOB_ID", env.get("SLURM_JOBID"))
    if job:
        found.tag, found.tag_source = f"slurm.{job}", "Slurm: SLURM_JOB_ID"
    return found


# Innermost first: MPI launchers, then resource managers, then the last resort.
LAUNCHERS = (_open_mpi, _hydra, _pals, _pmix, _flux, _slurm, _lsf, _last_resort)


def find(environ, proc, tag=None, count=None):
    """The group this rank belongs to. `tag`/`count` are the command line's (None if absent).

    The count comes from the innermost launcher that gives one; the tag from that launcher if it
    has one, else from the innermost launcher that names the job, else from the parent pid.
    Raises `Fatal` with ch-run's messages for bad values.
    """
    counted = named = None
    for launcher in LAUNCHERS:
        if counted is not None and named is not None:
            break
        try:
            answer = launcher(environ, proc)
        except Fatal:
            if count is None and counted is None:
                raise
            continue      # a count we no longer need; its launcher can still not name the job
        if answer is None:
            continue
        if counted is None and count is None and answer.count is not None:
            counted = answer
            named = answer if answer.tag is not None else named
        elif named is None and answer.tag is not None:
            named = answer
    if count is not None:
        group_count, count_source = count, "command line"
    elif counted is not None:
        group_count, count_source = counted.count, counted.count_source
    else:
        group_count, count_source = 0, ""
    if group_count <= 0:
        raise Fatal("join: no valid peer group size found")
    if tag is not None:
        group_tag, tag_source = tag, "command line"
    elif named is not None:
        group_tag, tag_source = named.tag, named.tag_source
    else:
        group_tag, tag_source = f"ppid.{proc.ppid}", "parent pid"
    if not group_tag:
        raise Fatal("join: peer group tag cannot be empty string")
    return Group(group_tag, tag_source, group_count, count_source)


def this_process(environ):
    """The facts `find` needs that are not in the environment (the one impure helper here:
    it reads /proc, and only under hydra)."""
    import os

    proxy = 0
    if "MPI_LOCALNRANKS" in environ:
        pid = os.getppid()
        for _ in range(8):       # the proxy is the parent, or a few wrappers up
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    comm, _, rest = f.read().partition(b" (")[2].rpartition(b") ")
            except OSError:
                break
            if comm == b"hydra_pmi_proxy":
                proxy = pid
                break
            pid = int(rest.split()[1])
            if pid <= 1:
                break
    return Process(ppid=os.getppid(), hostname=os.uname().nodename, hydra_proxy=proxy)
