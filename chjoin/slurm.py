"""Slurm's Prolog and Epilog for nodes that run chjoin: `python -m chjoin.slurm prolog|epilog`.

slurmd runs both as root, once per node per job, with the job's ids in the environment
(SLURM_JOB_ID, SLURM_JOB_UID, SLURM_JOB_GID, SLURM_JOB_USER, SLURMD_NODENAME); the wrappers in
slurm/ set the site's settings from /etc/chjoin/slurm.conf. Every line they report goes to
stdout and, with CHJOIN_SLURM_LOG, to that file.

prolog: makes sure this node can start the job user's containers, else fails the job with the
  reason. A node fault (unprivileged user namespaces refused) drains the node with the reason, as
  Slurm does for any failing Prolog; a job fault (its image unreadable) cancels only the job and
  puts the reason in its AdminComment. A job asks for checks and staging in its comment:
      --comment=chjoin-image=PATH    PATH must be readable by the job's user
      --comment=chjoin-stage=PATH    copy SquashFS file PATH to $CHJOIN_STAGE_DIR/JOBID/NAME,
                                     if chjoin can run it (a sound superblock, the file whole)
epilog: removes what chjoin left on this node for the ending job: holder processes of the
  job's uid started within the job (those of its named containers too: the job's names end with
  it), the IPC objects of the job's Slurm tags and names, records of that uid no live process
  uses any more, and the job's staging directory. Always exits 0.
"""

import os
import sys
import time

from chjoin import ipc, ns

EXIT_NODE_FAULT = 1     # slurmd drains the node and requeues (holds) the job


class Job:
    """The job slurmd runs us for, from its environment."""

    def __init__(self, environ):
        self.id = environ["SLURM_JOB_ID"]
        self.uid = int(environ["SLURM_JOB_UID"])
        self.gid = int(environ.get("SLURM_JOB_GID", self.uid))
        self.user = environ.get("SLURM_JOB_USER", str(self.uid))
        self.node = environ.get("SLURMD_NODENAME") or os.uname().nodename
        self.stage_dir = environ.get("CHJOIN_STAGE_DIR") or "/var/tmp/chjoin-stage"
        self.log_path = environ.get("CHJOIN_SLURM_LOG")

    def say(self, role, message):
        line = f"chjoin {role}: job {self.id} on {self.node}: {message}"
        print(line, flush=True)
        if self.log_path:
            try:
                with open(self.log_path, "a") as f:
                    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
            except OSError:
                pass


# --- prolog ---------------------------------------------------------------------------------

def prolog(job, run=None):
    """Check the node, then the job's requests; returns the exit code for slurmd."""
    import subprocess
    run = run or subprocess.run
    problem = as_user(job, _try_user_namespace)
    if problem:
        reason = f"can't run containers: unprivileged user namespaces fail for {job.user}: " \
                 f"{problem}{_userns_hint()}"
        job.say("prolog", reason)
        run(["scontrol", "update", f"NodeName={job.node}", "State=DRAIN",
             f"Reason=chjoin: {reason}"[:250]], capture_output=True)
        return EXIT_NODE_FAULT
    for key, path in requests(comment_of(job, run)):
        if key == "chjoin-image":
            problem = as_user(job, _check_readable, path)
        else:
            problem = stage(job, path)
        if problem:
            job.say("prolog", f"cancelling the job: {problem}")
            run(["scontrol", "update", f"JobId={job.id}", f"AdminComment=chjoin: {problem}"],
                capture_output=True)
            run(["scancel", job.id], capture_output=True)
            return 0
    job.say("prolog", "node ready for containers")
    return 0


def comment_of(job, run):
    done = run(["squeue", "-h", "-j", job.id, "-o", "%k"], capture_output=True, text=True)
    comment = done.stdout.strip() if done.returncode == 0 else ""
    return "" if comment == "(null)" else comment


def requests(comment):
    """[(key, path)] of the chjoin-image=PATH and chjoin-stage=PATH words of a job comment."""
    found = []
    for word in comment.replace(",", " ").split():
        key, _, value = word.partition("=")
        if key in ("chjoin-image", "chjoin-stage") and value:
            found.append((key, value))
    return found


def as_user(job, check, *args):
    """Run `check(*args)` in a child that has dropped to the job's ids; its problem or ""."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        problem = "can't drop privileges"
        try:
            os.close(read_end)
            if (os.getuid(), os.getgid()) != (job.uid, job.gid):
                os.setgroups([])
                os.setgid(job.gid)
                os.setuid(job.uid)
            problem = check(*args)
        except BaseException as e:
            problem = f"{problem}: {e}"
        finally:
            os.write(write_end, problem.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        problem = f.read().decode()
    os.waitpid(pid, 0)
    return problem


def _try_user_namespace():
    from chjoin import libc
    try:
        libc.unshare(libc.CLONE_NEWUSER | libc.CLONE_NEWNS)
    except OSError as e:
        return e.strerror
    return ""


def _userns_hint():
    for path in ("/proc/sys/user/max_user_namespaces",
                 "/proc/sys/kernel/unprivileged_userns_clone"):
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value == "0":
            return f" ({path.removeprefix('/proc/sys/').replace('/', '.')} = 0)"
    return ""


def _check_readable(path):
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb"):
                pass
    except OSError as e:
        return f"image {path} is not readable by the job's user: {e.strerror}"
    return ""


def stage(job, path):
    """Copy SquashFS `path`, read as the job's user, to the job's directory on this node."""
    dest_dir = os.path.join(job.stage_dir, job.id)
    dest = os.path.join(dest_dir, os.path.basename(path))
    started = time.monotonic()
    os.makedirs(job.stage_dir, mode=0o755, exist_ok=True)
    os.makedirs(dest_dir, mode=0o700, exist_ok=True)
    os.chown(dest_dir, job.uid, job.gid)
    problem = as_user(job, _copy_squashfs, path, dest)
    if not problem:
        size = os.stat(dest).st_size
        job.say("prolog", f"staged {path} to {dest} ({size / 2**20:.1f} MiB in "
                          f"{time.monotonic() - started:.2f} s)")
    return problem


def _copy_squashfs(path, dest):
    """Copy `path` to `dest` if it is a SquashFS image chjoin can run (its superblock is sound
    and the file whole); else the reason it isn't."""
    import shutil

    from chjoin.image import squashfs_problem
    try:
        with open(path, "rb") as src:
            problem = squashfs_problem(src.read(96), os.fstat(src.fileno()).st_size)
            if problem:
                return f"can't stage {path}: {problem}"
            src.seek(0)
            with open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except OSError as e:
        return f"can't stage {path}: {e.strerror}: {e.filename}"
    return ""


# --- epilog ---------------------------------------------------------------------------------

def epilog(job):
    """Remove what chjoin left for `job` on this node, reporting each thing; returns 0."""
    removed = [f"killed holder pid {pid}" for pid in kill_holders(job)]
    removed += [f"removed {path}" if path.startswith("/") else f"dismissed {path}"
                for path in remove_ipc(job)]
    stage_dir = os.path.join(job.stage_dir, job.id)
    if os.path.isdir(stage_dir):
        import shutil
        shutil.rmtree(stage_dir, ignore_errors=True)
        removed.append(f"removed {stage_dir}")
    for line in removed:
        job.say("epilog", line)
    if not removed:
        job.say("epilog", "nothing left behind")
    return 0


def kill_holders(job):
    """SIGKILL the chjoin holders of the job's user that were started within this job (their
    environment names it); returns their pids once they are gone."""
    killed = []
    for pid in _pids():
        if _comm(pid) != ns.HOLDER_NAME or _uid(pid) != job.uid:
            continue
        if f"\0SLURM_JOB_ID={job.id}\0".encode() not in _environ(pid):
            continue
        try:
            os.kill(pid, 9)
            killed.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while any(ns.start_time(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.01)
    return killed


def remove_ipc(job):
    """Unlink the job's records and semaphores: those of its Slurm tags (`slurm.JOB.STEP`, as
    stored in each record: names say nothing) and named containers (`name.JOB.NAME`), and any
    of its uid
    that no live process uses (`ipc.sweep_all`, as `chjoinctl gc` does); returns what was
    removed: paths, and "holder pid N" for holders of groups that were over."""
    done = ipc.sweep_all(f"chjoin-{job.uid}-",
                         force_tag=(f"slurm.{job.id}.", f"name.{job.id}."))
    return [detail if what == "removed" else f"holder pid {detail}" for what, detail in done]


def _pids():
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _comm(pid):
    return _read(f"/proc/{pid}/comm").strip().decode(errors="replace")


def _uid(pid):
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith(b"Uid:"):
            return int(line.split()[1])
    return None


def _environ(pid):
    return b"\0" + _read(f"/proc/{pid}/environ")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["prolog"], ["epilog"]):
        print("usage: python -m chjoin.slurm prolog|epilog  (run by slurmd)", file=sys.stderr)
        return 64
    try:
        job = Job(os.environ)
    except (KeyError, ValueError) as e:
        print(f"chjoin {argv[0]}: not run by slurmd: bad or missing {e}", file=sys.stderr)
        return 64
    return prolog(job) if argv == ["prolog"] else epilog(job)


if __name__ == "__main__":
    sys.exit(main())
