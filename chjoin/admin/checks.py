"""What `chjoinctl check` tries: can this node run containers for this user, and this image?
Each check returns a `Result`: ok, warn or fail, what was tried, and the fix. The Slurm prolog
runs the user-namespace check through the same code (`chjoin.slurm`)."""

import os
import tempfile

from chjoin import image, libc, slurm

OK, WARN, FAIL = "ok", "warn", "fail"


class Result:
    def __init__(self, name, status, tried, fix=""):
        self.name, self.status, self.tried, self.fix = name, status, tried, fix

    def as_dict(self):
        return {"check": self.name, "status": self.status, "tried": self.tried, "fix": self.fix}

    def line(self):
        text = f"{self.status:<4}  {self.name}: {self.tried}"
        return text + (f"\n      fix: {self.fix}" if self.fix else "")


def in_child(check, *args):
    """`check(*args)` in a forked child as this user (chjoin.runas.run_as, 30 s at most): its
    problem or ""."""
    import time

    from chjoin import runas
    try:
        return runas.run_as(os.getuid(), os.getgid(), check, *args, groups=os.getgroups(),
                            deadline=time.monotonic() + 30) or ""
    except (runas.Timeout, runas.ChildFailed) as e:
        return str(e)


def _sysctl(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def user_namespace_sysctls():
    found, bad = [], []
    for path, good in (("/proc/sys/user/max_user_namespaces", lambda v: int(v) > 0),
                       ("/proc/sys/kernel/unprivileged_userns_clone", lambda v: v == "1"),
                       ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
                        lambda v: v == "0")):
        value = _sysctl(path)
        if value is None:
            continue
        name = path.removeprefix("/proc/sys/").replace("/", ".")
        found.append(f"{name} = {value}")
        if not good(value):
            bad.append(name)
    tried = "read " + (", ".join(found) or "no user-namespace sysctl")
    if bad:
        value = "0" if "apparmor" in bad[0] else "15000" if "max" in bad[0] else "1"
        return Result("user namespace sysctls", FAIL, tried,
                      f"sysctl -w {bad[0]}={value} (and in /etc/sysctl.d/ to keep it)")
    return Result("user namespace sysctls", OK, tried)


def user_namespace():
    problem = in_child(slurm._try_user_namespace)
    if isinstance(problem, list):           # [errno, strerror]
        problem = problem[1]
    tried = "unshare(CLONE_NEWUSER|CLONE_NEWNS) in a child"
    if problem:
        return Result("user namespace", FAIL, f"{tried}: {problem}{slurm._userns_hint()}",
                      "allow unprivileged user namespaces: sysctl user.max_user_namespaces=15000"
                      " (kernel.unprivileged_userns_clone=1 on Debian kernels before 5.10)")
    return Result("user namespace", OK, f"{tried}: created")


def _nested():
    try:
        _mapped_namespace()
        libc.unshare(libc.CLONE_NEWUSER)
    except OSError as e:
        return e.strerror
    return ""


def nested_user_namespace():
    problem = in_child(_nested)
    tried = "unshare(CLONE_NEWUSER) in a child's user namespace"
    if problem:
        return Result("nested user namespace", WARN, f"{tried}: {problem}",
                      "raise user.max_user_namespaces; containers started from containers "
                      "(--join inside ch-run, nested launchers) need it")
    return Result("nested user namespace", OK, f"{tried}: created")


def _mapped_namespace():
    uid, gid = os.getuid(), os.getgid()
    libc.unshare(libc.CLONE_NEWUSER | libc.CLONE_NEWNS)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)


def _overlay_and_xattrs(scratch):
    try:
        _mapped_namespace()
        libc.mount("tmpfs", scratch, "tmpfs")
        for d in ("lower", "upper", "work", "merged"):
            os.mkdir(f"{scratch}/{d}")
        try:
            os.setxattr(f"{scratch}/upper", "user.chjoin", b"1")
            xattrs = "tmpfs user xattrs: yes"
        except OSError as e:
            xattrs = f"tmpfs user xattrs: {e.strerror}"
        libc.mount("overlay", f"{scratch}/merged", "overlay", 0,
                   f"lowerdir={scratch}/lower,upperdir={scratch}/upper,"
                   f"workdir={scratch}/work,userxattr")
    except OSError as e:
        return f"overlay: {e.strerror}"
    return "" if xattrs.endswith("yes") else xattrs


def overlay_and_xattrs():
    scratch = tempfile.mkdtemp(prefix="chjoinctl-")
    try:
        problem = in_child(_overlay_and_xattrs, scratch)
    finally:
        os.rmdir(scratch)
    tried = "in a user namespace: a tmpfs, a user.* xattr on it, an overlay (userxattr) on it"
    if problem.startswith("overlay"):
        return Result("unprivileged overlayfs (-W)", WARN, f"{tried}: {problem}",
                      "a kernel >= 5.11 mounts overlayfs in user namespaces; without it use -w "
                      "or a writable image")
    if problem:
        return Result("unprivileged overlayfs (-W)", WARN, f"{tried}: {problem}",
                      "tmpfs user xattrs need Linux >= 6.6; -W then can't whiteout on tmpfs")
    return Result("unprivileged overlayfs (-W)", OK, f"{tried}: all work")


def _kernel_calls():
    try:
        fd = libc.pidfd_open(os.getpid())
        os.close(fd)
    except OSError as e:
        return f"pidfd_open: {e.strerror}"
    try:
        _mapped_namespace()
        fd = libc.clone_tree("/proc")
        os.close(fd)
    except OSError as e:
        return f"open_tree: {e.strerror}"
    return ""


def kernel_calls():
    problem = in_child(_kernel_calls)
    tried = "pidfd_open(self); open_tree(/proc, OPEN_TREE_CLONE) in a user namespace"
    if problem:
        return Result("kernel calls (pidfd, open_tree/move_mount)", FAIL, f"{tried}: {problem}",
                      f"chjoin needs Linux >= 5.3 (pidfd) and >= 5.2 (new mount API); this is "
                      f"{os.uname().release}")
    return Result("kernel calls (pidfd, open_tree/move_mount)", OK, f"{tried}: both work "
                  f"(Linux {os.uname().release})")


def dev_shm():
    tried = "create, lock and unlink a file in /dev/shm"
    try:
        st = os.stat("/dev/shm")
        fd, path = tempfile.mkstemp(prefix="chjoinctl-check-", dir="/dev/shm")
        os.close(fd)
        os.unlink(path)
    except OSError as e:
        return Result("/dev/shm", FAIL, f"{tried}: {e.strerror}",
                      "mount a tmpfs on /dev/shm, mode 1777 (the rendezvous lives there)")
    if st.st_mode & 0o7777 != 0o1777:
        return Result("/dev/shm", WARN, f"{tried}: works, but mode {st.st_mode & 0o7777:o}",
                      "chmod 1777 /dev/shm")
    return Result("/dev/shm", OK, f"{tried}: works (mode 1777)")


def squashfs():
    program = image.find_squashfuse(os.environ)
    problem = image.fuse_problem()
    tried = f"{image.SQUASHFUSE} on $PATH: {program or 'not found'}; /dev/fuse: " \
            f"{problem or 'usable'}"
    if not program:
        return Result("SquashFS images", WARN, tried,
                      "apt-get install squashfuse (directory images work without it)")
    if problem:
        return Result("SquashFS images", WARN, tried,
                      "chmod 0666 /dev/fuse (udev does that; directory images work without it)")
    return Result("SquashFS images", OK, tried)


def spank_plugin(plugstack):
    from chjoin.admin import spank
    status, tried, fix = spank.examine(plugstack)
    return Result("SPANK plugin", status, tried, fix)


NEEDED = ("dev", "proc", "sys")             # mount points chjoin can't make in a read-only image
WANTED = ("tmp", "home", "etc/passwd", "etc/group")


def image_checks(ref):
    """The image `ref`: its kind, readable, the paths chjoin mounts or writes inside."""
    import pwd

    from chjoin.log import Fatal
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    storage = image.default_storage(os.environ, os.environ.get("USER") or user)
    try:
        found = image.find(ref, storage, unsafe=True)
    except Fatal as e:
        return [Result("image", FAIL, f"{ref}: {e}", "give a directory image, a SquashFS "
                       "file or a name in $CH_IMAGE_STORAGE that this user can read")]
    if found.squashfs:
        try:
            with open(found.path, "rb") as f:
                problem = image.squashfs_problem(f.read(96), os.fstat(f.fileno()).st_size)
        except OSError as e:
            problem = e.strerror
        results = [Result("image", FAIL if problem else OK,
                          f"{found.path}: SquashFS, {problem or 'superblock sound, file whole'}",
                          "rebuild it with mksquashfs (SquashFS 4.0)" if problem else "")]
        support = squashfs()
        if support.status != OK:
            results.append(Result("image needs SquashFS", FAIL, support.tried, support.fix))
        return results
    kind = "directory" + (" (by name, from storage)" if found.by_name else "")
    try:
        os.listdir(found.path)
    except OSError as e:
        return [Result("image", FAIL, f"{found.path}: {kind}, not readable: {e.strerror}",
                       "make it readable by this user (chmod -R a+rX)")]
    results = [Result("image", OK, f"{found.path}: {kind}, readable")]
    missing = [p for p in NEEDED if not os.path.isdir(os.path.join(found.path, p))]
    absent = [p for p in WANTED if not os.path.exists(os.path.join(found.path, p))]
    tried = f"looked for /{', /'.join(NEEDED + WANTED)} inside"
    if missing:
        results.append(Result("image paths", FAIL, f"{tried}: missing /{', /'.join(missing)}",
                              f"mkdir -p {' '.join(os.path.join(found.path, p) for p in missing)}"
                              " (or run it with -w)"))
    elif absent:
        results.append(Result("image paths", WARN, f"{tried}: missing /{', /'.join(absent)}",
                              "create them in the image, or launch with -w so chjoin can"))
    else:
        results.append(Result("image paths", OK, f"{tried}: all present"))
    return results


def node_checks(plugstack):
    return [user_namespace_sysctls(), user_namespace(), nested_user_namespace(),
            overlay_and_xattrs(), kernel_calls(), dev_shm(), squashfs(), spank_plugin(plugstack)]
