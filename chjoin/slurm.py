"""Slurm's Prolog and Epilog for nodes that run chjoin: `python -m chjoin.slurm prolog|epilog`.

slurmd runs both as root, once per node per job, with the job's ids in the environment
(SLURM_JOB_ID, SLURM_JOB_UID, SLURM_JOB_GID, SLURM_JOB_USER, SLURMD_NODENAME): those are all
they take from it. The site's settings come only from /etc/chjoin/slurm.conf (or --config),
and only when that file and every directory above it are root's and writable by nobody else.
Every line they report goes to stdout and, with CHJOIN_SLURM_LOG, to that file (opened
O_NOFOLLOW|O_APPEND, only if it is a root-owned regular file).

Root acts on nothing of the user's as root (chjoin.runas): every check and copy of a user's
path, every signal to a user's process and every removal of a user's object happens in a child
that has dropped to the user's ids, with a deadline after which it is killed; the hook as a
whole ends by CHJOIN_HOOK_TIMEOUT, which cuts every step's deadline (`Job.until`). The stage
directory must be root's, like every directory above it (chjoin never stages into a directory
a user could have made); each job's directory in it is made fresh and handed over through a
descriptor. docs/SECURITY.md says what is guarded, how, and which test shows it.

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
import stat
import sys
import time

from chjoin import runas

EXIT_NODE_FAULT = 1     # slurmd drains the node and requeues (holds) the job
CONFIG = "/etc/chjoin/slurm.conf"
DEFAULTS = {
    "CHJOIN_PYTHON": "/opt/chjoin/venv/bin/python",   # read by the shell wrappers only
    "CHJOIN_STAGE_DIR": "/var/lib/chjoin/stage",
    "CHJOIN_SLURM_LOG": "",
    "CHJOIN_CHECK_TIMEOUT": "30",     # seconds for each check run as the job's user
    "CHJOIN_STAGE_TIMEOUT": "600",    # seconds for staging one image as the job's user
    "CHJOIN_HOOK_TIMEOUT": "900",     # seconds for a whole prolog or epilog (all of the above)
    "CHJOIN_STAGE_MAX_MB": "0",       # the largest image staged (0: any that leaves RESERVE)
}
MAX_REQUESTS = 8        # chjoin-image= and chjoin-stage= words in one job's comment
RESERVE = 0.10          # of the stage file system that staging always leaves free
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Untrusted(Exception):
    """A path root would act on that a user could have made or changed."""


def _trusted(fd, path):
    st = os.fstat(fd)
    if st.st_uid != 0:
        raise Untrusted(f"{path} is owned by uid {st.st_uid}, not root")
    if st.st_mode & 0o022:
        raise Untrusted(f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):o})")
    return st


def open_trusted_dir(path, create=False):
    """A descriptor of directory `path` when it and every directory above it are root's and
    writable by nobody else, with no symlink on the way (each component opened O_NOFOLLOW
    relative to the one above); with `create`, its last component is made (0755) if missing.
    Raises Untrusted with the reason, FileNotFoundError if it is missing."""
    if not path.startswith("/"):
        raise Untrusted(f"{path} is not an absolute path")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise Untrusted(f"{path} has . or .. in it")
    fd = os.open("/", _DIR)
    try:
        _trusted(fd, "/")
        done = ""
        for i, part in enumerate(parts):
            done += "/" + part
            try:
                next_fd = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not (create and i == len(parts) - 1):
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                next_fd = os.open(part, _DIR, dir_fd=fd)
                os.fchmod(next_fd, 0o755)         # whatever slurmd's umask: users enter it
            except OSError as e:
                if e.errno in (20, 40):             # ENOTDIR, ELOOP: a symlink or a file
                    kind = "a symlink" if os.path.islink(done) else "not a directory"
                    raise Untrusted(f"{done} is {kind}") from None
                raise
            os.close(fd)
            fd = next_fd
            _trusted(fd, done)
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_config(path=CONFIG):
    """(settings, problem): DEFAULTS overlaid with the KEY=VALUE lines of `path` when it is a
    root-owned regular file writable by nobody else in a trusted directory; else DEFAULTS and
    the reason it was ignored ("" for a missing file). Nothing comes from the environment."""
    settings = dict(DEFAULTS)
    directory, name = os.path.split(os.path.abspath(path))
    try:
        dir_fd = open_trusted_dir(directory)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except FileNotFoundError:
        return settings, ""
    except (Untrusted, OSError) as e:
        return settings, f"ignoring {path}: {_reason(e)}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return settings, f"ignoring {path}: not a regular file"
        _trusted(fd, path)
        text = os.read(fd, 1 << 16).decode(errors="replace")
    except Untrusted as e:
        return settings, f"ignoring {path}: {e}"
    finally:
        os.close(fd)
    for line in text.splitlines():
        key, eq, value = line.strip().partition("=")
        if eq and key in DEFAULTS:
            settings[key] = value.strip().strip("'\"")
    return settings, ""


def _reason(e):
    if isinstance(e, OSError):
        return f"{e.strerror}: {e.filename}" if e.filename else str(e.strerror)
    return str(e)


def _seconds(settings, key):
    try:
        return max(1.0, float(settings[key]))
    except ValueError:
        return float(DEFAULTS[key])


class Job:
    """The job slurmd runs us for, from its environment (only the SLURM_* variables slurmd
    sets), and the site's settings."""

    def __init__(self, environ, settings=None):
        self.id = environ["SLURM_JOB_ID"]
        if not (self.id.isascii() and self.id.isdigit()) or len(self.id) > 20:
            raise ValueError(f"SLURM_JOB_ID={self.id!r}")
        self.uid = int(environ["SLURM_JOB_UID"])
        self.gid = int(environ.get("SLURM_JOB_GID", self.uid))
        self.user = environ.get("SLURM_JOB_USER", str(self.uid))
        self.node = environ.get("SLURMD_NODENAME") or os.uname().nodename
        settings = settings or dict(DEFAULTS)
        self.stage_dir = settings["CHJOIN_STAGE_DIR"]
        self.check_timeout = _seconds(settings, "CHJOIN_CHECK_TIMEOUT")
        self.stage_timeout = _seconds(settings, "CHJOIN_STAGE_TIMEOUT")
        self.hook_timeout = _seconds(settings, "CHJOIN_HOOK_TIMEOUT")
        self.deadline = time.monotonic() + self.hook_timeout
        # what runs as the user ends early enough for the prolog to cancel the job in time
        self.work_deadline = self.deadline - min(2 * SLURM_COMMAND_TIMEOUT,
                                                 self.hook_timeout / 4)
        try:
            self.stage_max = max(0, int(settings["CHJOIN_STAGE_MAX_MB"])) << 20
        except ValueError:
            self.stage_max = 0
        self.log_fd, self.log_problem = _open_log(settings["CHJOIN_SLURM_LOG"])

    def until(self, seconds):
        """(deadline, cut) of a step of at most `seconds` starting now: `seconds` from now, or
        the hook's own deadline for such work if that comes first (then `cut` is true)."""
        wanted = time.monotonic() + seconds
        return min(wanted, self.work_deadline), wanted > self.work_deadline

    def out_of_time(self, doing):
        """The line of a step cut short (or never started) by CHJOIN_HOOK_TIMEOUT."""
        return (f"{doing} as {self.user} was still running at the hook's deadline "
                f"(CHJOIN_HOOK_TIMEOUT={self.hook_timeout:g} s): killed")

    def say(self, role, message):
        line = f"chjoin {role}: job {self.id} on {self.node}: {message}"
        # names come from users (/dev/shm, paths): one line each, ASCII, whatever bytes they hold
        line = line.encode("unicode_escape").decode("ascii")
        print(line, flush=True)
        if self.log_fd is not None:
            try:
                os.write(self.log_fd, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n".encode())
            except OSError:
                pass


def _open_log(path):
    """(fd, problem) of log `path` for appending: opened O_NOFOLLOW|O_APPEND (created 0640 if
    missing), kept only if it is a regular file of root's with one link."""
    if not path:
        return None, ""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW |
                     os.O_NONBLOCK | os.O_CLOEXEC, 0o640)
    except OSError as e:
        return None, f"not logging to {path}: {'a symlink' if e.errno == 40 else e.strerror}"
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_nlink != 1:
        os.close(fd)
        return None, f"not logging to {path}: not a root-owned regular file with one link"
    return fd, ""


# --- prolog ---------------------------------------------------------------------------------

def prolog(job, run=None, comment=None):
    """Check the node, then the job's requests (its comment, or `comment`); returns the exit
    code for slurmd: a node fault drains the node, a job's problem cancels only the job."""
    import subprocess
    run = run or subprocess.run
    problem, node_fault = _probe_user_namespace(job)
    if problem and node_fault:
        reason = f"can't run containers: unprivileged user namespaces fail for {job.user}: " \
                 f"{problem}{_userns_hint()}"
        job.say("prolog", reason)
        slurm_command(job, run, ["scontrol", "update", f"NodeName={job.node}", "State=DRAIN",
                                 f"Reason=chjoin: {reason}"[:250]])
        return EXIT_NODE_FAULT
    if problem:
        wanted = [("job", f"unprivileged user namespaces fail for {job.user}: {problem}")]
    else:
        done = None if comment is not None else slurm_command(
            job, run, ["squeue", "-h", "-j", job.id, "-o", "%k"])
        wanted = requests(comment if comment is not None else _comment(done))
    if len(wanted) > MAX_REQUESTS:
        wanted = [("job", f"{len(wanted)} chjoin-image=/chjoin-stage= requests in the "
                          f"job's comment; at most {MAX_REQUESTS}")]
    for key, path in wanted:
        if key == "job":
            problem = path
        elif key == "chjoin-image":
            problem = as_user(job, job.check_timeout, _check_readable, path,
                              stuck=f"checking image {path}")
        else:
            problem = stage(job, path)
        if problem:
            job.say("prolog", f"cancelling the job: {problem}")
            slurm_command(job, run, ["scontrol", "update", f"JobId={job.id}",
                                     f"AdminComment=chjoin: {problem}"[:1000]])
            slurm_command(job, run, ["scancel", job.id])
            return 0
    job.say("prolog", "node ready for containers")
    return 0


SLURM_COMMAND_TIMEOUT = 30      # seconds for one scontrol, squeue or scancel


def slurm_command(job, run, argv):
    """Run a Slurm client command with a deadline (SLURM_COMMAND_TIMEOUT, or what is left of
    the hook's); its CompletedProcess, or None (one line) when it can't be run or doesn't
    answer in time (the hook goes on: it never hangs on slurmctld, and a missing command is
    not a node fault)."""
    import subprocess
    timeout = max(1.0, min(SLURM_COMMAND_TIMEOUT, job.deadline - time.monotonic()))
    try:
        return run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        job.say("prolog", f"problem: {argv[0]} did not answer in {timeout:g} s")
    except OSError as e:
        job.say("prolog", f"problem: can't run {argv[0]}: {e.strerror}")
    return None


def _comment(done):
    comment = done.stdout.strip() if done is not None and done.returncode == 0 else ""
    return "" if comment == "(null)" else comment


def _probe_user_namespace(job):
    """(problem, node_fault) of an unprivileged user namespace made as the job's user. Only the
    kernel refusing (EPERM, EACCES, ENOSYS, EINVAL, or a limit of 0) is the node's fault; the
    user can kill or stop the probe, or use up their own namespace count, from another job of
    theirs: that fails this job, never the node."""
    import errno
    _, groups = runas.ids_of(job.uid)
    deadline, cut = job.until(job.check_timeout)
    try:
        found = runas.run_as(job.uid, job.gid, _try_user_namespace, groups=groups,
                             deadline=deadline)
    except runas.Timeout:
        if cut:
            return job.out_of_time("the user namespace check"), False
        return (f"the check as {job.user} was still running after {job.check_timeout:g} s: "
                "killed"), False
    except runas.ChildFailed as e:
        return f"the check as {job.user} failed: {e}", False
    if not found:
        return "", False
    number, text = found
    fault = number in (errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EINVAL) or \
        bool(_userns_hint())
    return text, fault


def requests(comment):
    """[(key, path)] of the chjoin-image=PATH and chjoin-stage=PATH words of a job comment."""
    found = []
    for word in comment.replace(",", " ").split():
        key, _, value = word.partition("=")
        if key in ("chjoin-image", "chjoin-stage") and value:
            found.append((key, value))
    return found


def as_user(job, timeout, check, *args, stuck="", keep_fds=()):
    """`check(*args)` in a child running as the job's user (`runas.run_as`), killed after
    `timeout` seconds; its problem, "" when none. `stuck` names what the child was doing, for
    the line of one that had to be killed."""
    _, groups = runas.ids_of(job.uid)
    deadline, cut = job.until(timeout)
    if deadline <= time.monotonic():
        return job.out_of_time(stuck or "a check")
    try:
        return runas.run_as(job.uid, job.gid, check, *args, groups=groups, keep_fds=keep_fds,
                            deadline=deadline) or ""
    except runas.Timeout:
        if cut:
            return job.out_of_time(stuck or "a check")
        return (f"{stuck or 'a check'} as {job.user} was still running after {timeout:g} s "
                "(a FIFO, or a mount that does not answer?): killed")
    except runas.ChildFailed as e:
        return f"{stuck or 'a check'} as {job.user} failed: {e}"


def _try_user_namespace():
    from chjoin import libc
    try:
        libc.unshare(libc.CLONE_NEWUSER | libc.CLONE_NEWNS)
    except OSError as e:
        return [e.errno, e.strerror]
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


def open_user_path(path):
    """(fd, st) of the user's `path`, opened O_NONBLOCK (a FIFO never blocks the open) and
    only if it is a regular file or a directory; raises OSError, or ValueError naming its
    kind."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        os.close(fd)
        raise ValueError("not a regular file or directory")
    return fd, st


def _check_readable(path):
    try:
        fd, st = open_user_path(path)
        try:
            if stat.S_ISDIR(st.st_mode):
                os.listdir(fd)
            else:
                os.pread(fd, 1, 0)
        finally:
            os.close(fd)
    except ValueError as e:
        return f"image {path} is {e}"
    except OSError as e:
        return f"image {path} is not readable by the job's user: {e.strerror}"
    return ""


def stage(job, path):
    """Copy SquashFS `path`, read as the job's user, into a directory of the job's own made
    fresh in the (root's) stage directory; the problem, "" when staged."""
    name = os.path.basename(path)
    if name in ("", ".", ".."):
        return f"can't stage {path}: not a file name"
    started = time.monotonic()
    try:
        stage_fd = open_trusted_dir(job.stage_dir, create=True)
    except (Untrusted, OSError) as e:
        return f"can't stage {path}: refusing stage directory {job.stage_dir}: {_reason(e)}"
    job_dir = f"{job.stage_dir.rstrip('/')}/{job.id}"
    try:
        try:
            os.mkdir(job.id, 0o700, dir_fd=stage_fd)
        except FileExistsError:
            return f"can't stage {path}: {job_dir} already exists (this prolog makes it fresh)"
        job_fd = os.open(job.id, _DIR, dir_fd=stage_fd)
        try:
            os.fchown(job_fd, job.uid, job.gid)
            problem = as_user(job, job.stage_timeout, _copy_squashfs, path, job_fd, name,
                              job.stage_max, stuck=f"staging {path}", keep_fds=[job_fd])
            if not problem:
                size = os.stat(name, dir_fd=job_fd, follow_symlinks=False).st_size
                job.say("prolog", f"staged {path} to {job_dir}/{name} ({size / 2**20:.1f} MiB "
                                  f"in {time.monotonic() - started:.2f} s)")
        finally:
            os.close(job_fd)
    except OSError as e:
        return f"can't stage {path}: {_reason(e)}"
    finally:
        os.close(stage_fd)
    return problem


def _copy_squashfs(path, dir_fd, name, max_size=0):
    """As the job's user: copy `path` to `name` in directory `dir_fd` (created, never an
    existing file) if it is a SquashFS image chjoin can run (a sound superblock, the file
    whole), no larger than `max_size` (0: any) and leaving RESERVE of the file system free;
    else the reason it isn't."""
    from chjoin.image import squashfs_problem
    try:
        src, st = open_user_path(path)
    except ValueError as e:
        return f"can't stage {path}: {e}"
    except OSError as e:
        return f"can't stage {path}: {e.strerror}"
    try:
        if not stat.S_ISREG(st.st_mode):
            return f"can't stage {path}: not a regular file"
        problem = squashfs_problem(os.pread(src, 96, 0), st.st_size)
        if problem:
            return f"can't stage {path}: {problem}"
        if max_size and st.st_size > max_size:
            return (f"can't stage {path}: {st.st_size / 2**20:.1f} MiB, more than this node "
                    f"stages ({max_size >> 20} MiB)")
        fs = os.fstatvfs(dir_fd)
        if st.st_size > fs.f_bavail * fs.f_frsize - RESERVE * fs.f_blocks * fs.f_frsize:
            return (f"can't stage {path}: {st.st_size / 2**20:.1f} MiB would leave less than "
                    f"{RESERVE:.0%} of the stage file system free")
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o644, dir_fd=dir_fd)
        try:
            offset = 0
            while offset < st.st_size:
                sent = os.sendfile(out, src, offset, min(1 << 24, st.st_size - offset))
                if sent == 0:
                    return f"can't stage {path}: it shrank while being copied"
                offset += sent
        finally:
            os.close(out)
    except OSError as e:
        return f"can't stage {path}: {e.strerror}"
    finally:
        os.close(src)
    return ""


# --- epilog ---------------------------------------------------------------------------------

def epilog(job):
    """Remove what chjoin left for `job` on this node, reporting each thing and each problem
    (one line each); returns 0 whatever it finds (a failing Epilog drains the node)."""
    lines = []
    for step in (kill_holders, remove_ipc, remove_stage):
        try:
            lines += step(job)
        except Exception as e:
            lines.append(f"problem: {step.__name__}: {_reason(e)}")
    for line in lines:
        job.say("epilog", line)
    if not lines:
        job.say("epilog", "nothing left behind")
    return 0


def kill_holders(job):
    """SIGKILL, as the job's user, the chjoin holders of that user that were started within
    this job (their environment names it); lines for what was killed and what went wrong."""
    _, groups = runas.ids_of(job.uid)
    try:
        found = runas.run_as(job.uid, job.gid, _kill_job_holders, job.id, groups=groups,
                             deadline=job.until(15)[0])
    except (runas.Timeout, runas.ChildFailed) as e:
        return [f"problem: killing holders as uid {job.uid}: {e}"]
    return [f"killed holder pid {pid}" if what == "killed" else f"problem: {pid}"
            for what, pid in found]


def _kill_job_holders(job_id):
    """As the job's user: the holders of this uid whose environment has SLURM_JOB_ID=`job_id`,
    each SIGKILLed through a pidfd opened before its /proc entry was read; waits (5 s at most)
    until they are gone. [("killed", pid)] and [("problem", line)]."""
    from chjoin import libc, ns
    me, found, killed = os.getuid(), [], []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            fd = libc.pidfd_open(pid)
        except OSError:
            continue
        try:
            if _comm(pid) != ns.HOLDER_NAME or runas.proc_uids(pid) != [me] * 4:
                continue
            if f"\0SLURM_JOB_ID={job_id}\0".encode() not in _environ(pid):
                continue
            libc.pidfd_send_signal(fd, 9)
            killed.append(pid)
            found.append(("killed", pid))
        except OSError:
            pass
        finally:
            os.close(fd)
    deadline = time.monotonic() + 5
    while any(ns.start_time(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.01)
    return found


def remove_ipc(job):
    """Unlink the job's records and semaphores: those of its Slurm tags (`slurm.JOB.STEP`, as
    stored in each record: names say nothing) and its named containers (`name.JOB.NAME`), and
    any of its uid that no live process uses, as `chjoinctl gc` does (chjoin.sweep: as the
    owner, only the owner's objects, holders signalled through a checked pidfd)."""
    from chjoin import sweep
    done = sweep.sweep_all(job.uid, force_tag=(f"slurm.{job.id}.", f"name.{job.id}."),
                           deadline=job.until(sweep.TIMEOUT)[0])
    return [f"removed {d}" if what == "removed" else
            f"dismissed holder pid {d}" if what == "holder" else f"problem: {d}"
            for what, d in sweep.bounded(done, job.uid)]


def remove_stage(job):
    """Remove the job's stage directory: its contents as the job's user, then the directory
    itself (root's stage directory is writable only by root)."""
    try:
        stage_fd = open_trusted_dir(job.stage_dir)
    except FileNotFoundError:
        return []
    except (Untrusted, OSError) as e:
        return [f"problem: left stage directory {job.stage_dir} alone: {_reason(e)}"]
    job_dir = f"{job.stage_dir.rstrip('/')}/{job.id}"
    try:
        try:
            job_fd = os.open(job.id, _DIR, dir_fd=stage_fd)
        except FileNotFoundError:
            return []
        except OSError as e:
            return [f"problem: left {job_dir} alone: {_reason(e)}"]
        try:
            st = os.fstat(job_fd)
            if st.st_uid != job.uid:
                return [f"problem: left {job_dir} alone: owned by uid {st.st_uid}, "
                        f"not the job's {job.uid}"]
            problem = as_user(job, job.stage_timeout, _empty_dir, job_fd,
                              stuck=f"emptying {job_dir}", keep_fds=[job_fd])
        finally:
            os.close(job_fd)
        if problem:
            return [f"problem: {problem}"]
        os.rmdir(job.id, dir_fd=stage_fd)
        return [f"removed {job_dir}"]
    except OSError as e:
        return [f"problem: removing {job_dir}: {_reason(e)}"]
    finally:
        os.close(stage_fd)


def _empty_dir(dir_fd):
    """As the job's user: remove everything in directory `dir_fd` (never following a link)."""
    import shutil
    for name in os.listdir(dir_fd):
        if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
    return ""


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _comm(pid):
    return _read(f"/proc/{pid}/comm").strip().decode(errors="replace")


def _environ(pid):
    return b"\0" + _read(f"/proc/{pid}/environ")


USAGE = "usage: python -I -m chjoin.slurm prolog|epilog [--config FILE] [--comment TEXT]"


def main(argv=None):
    """prolog|epilog [--config FILE] [--comment TEXT] (the job's comment instead of asking
    squeue: for trying the prolog by hand). Settings come from FILE (default CONFIG), never
    from the environment."""
    argv = sys.argv[1:] if argv is None else list(argv)
    role, options = (argv[0], argv[1:]) if argv else ("", [])
    if role not in ("prolog", "epilog") or len(options) % 2 or \
            any(k not in ("--config", "--comment") for k in options[::2]):
        print(USAGE, file=sys.stderr)
        return 64
    given = dict(zip(options[::2], options[1::2]))
    try:
        settings, problem = read_config(given.get("--config", CONFIG))
        try:
            job = Job(os.environ, settings)
        except (KeyError, ValueError) as e:
            print(f"chjoin {role}: not run by slurmd: bad or missing {e}", file=sys.stderr)
            return 0 if role == "epilog" else 64
        for line in (problem, job.log_problem):
            if line:
                job.say(role, line)
        if role == "prolog":
            return prolog(job, comment=given.get("--comment"))
        return epilog(job)
    except Exception as e:       # a bug: the epilog still exits 0, the prolog fails the job
        print(f"chjoin {role}: problem: {type(e).__name__}: {_reason(e)}", flush=True)
        job_id = os.environ.get("SLURM_JOB_ID", "")
        if role == "prolog" and job_id.isascii() and job_id.isdigit():
            import subprocess
            try:
                subprocess.run(["scancel", job_id], capture_output=True,
                               timeout=SLURM_COMMAND_TIMEOUT)
            except (OSError, subprocess.SubprocessError):
                pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
