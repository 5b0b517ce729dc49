"""The phases of one launch, once the command line is a `Launch`: build the container (single
or winner), or enter a group's container (peer), then the environment and the exec.

Runs on every rank: imports what each path needs where it needs it.
"""

import os

from chjoin import env as envmod
from chjoin.log import EXIT_EXEC, Fatal, Log, checkpoint, flush_stdio


def run(launch, clock, closed_stdio=()):
    """Build or join the container and exec the command in it; returns only by raising `Fatal`."""
    from chjoin import libc, ns

    log = Log(launch.verbosity, clock)
    ident = launch.identity
    # What runs inside the container must be imported outside it: the image hides our venv.
    program = None
    if launch.seccomp:
        from chjoin import seccomp

        program = seccomp.program()
    default_command = None
    if not launch.command or launch.command[0] == "-":
        from chjoin import image

        default_command = image.default_command_reader()
    group = None
    if launch.join and launch.name is None:     # a named container finds its own launch
        from chjoin import peers

        group = peers.find(launch.environ, peers.this_process(launch.environ),
                           launch.join_tag, launch.join_count)
    report(launch, group, log)
    if group:
        clock.group = (group.tag, group.count)
        clock.done("discovery")
    if launch.name is not None:
        from chjoin import named

        named.run(launch, log)
    elif launch.join_pid is not None:
        log.info(f"joining namespaces of pid {launch.join_pid}")
        ns.join_pid(launch.join_pid)
        clock.done("join")
        log.info(f"join: joined the namespaces of pid {launch.join_pid}")
    elif launch.join:
        join(launch, group, log)
    else:
        build(launch, log)
    home = f"/home/{ident.user_name}" if launch.home else None
    environment = envmod.build(launch.environ, launch.env_ops, home, os.path.isdir("/root"))
    clock.done("environment")
    command = launch.command
    if default_command:
        command = default_command(command, log)
    cwd = "/" if launch.cd is None else launch.cd       # `-c ''` fails as chdir("") does
    exec_command(command, environment, cwd, launch.verbosity, libc, clock, closed_stdio, program)


def report(launch, group, log):
    """ch-run 0.45's -v account of the launch, line for line (scripts read `join: ...`)."""
    if launch.verbosity < 1:
        return
    ident = launch.identity
    newroot = launch.newroot or launch.squash_mount or launch.image
    join = (f"1 {group.count} {group.tag} 0" if group else
            f"0 0 (null) {launch.join_pid or 0}")
    yes = {True: "yes", False: "no"}
    for line in (f"verbosity: {launch.verbosity}", f"image: {launch.image_ref}",
                 f"storage: {launch.storage}", f"newroot: {newroot}",
                 f"container uid: {ident.uid}", f"container gid: {ident.gid}",
                 f"join: {join}", f"host $TMPDIR: {launch.host_tmp}",
                 f"private /tmp: {int(launch.private_tmp)}", f"seccomp: {yes[launch.seccomp]}",
                 f"unsafe: {yes[launch.unsafe]}"):
        log.info(line)
    if group:
        log.info(f"join: peer group tag {group.tag} (from {group.tag_source})")
        log.info(f"join: peer group size {group.count} (from {group.count_source})")


def build(launch, log):
    """Make the container: namespaces, filesystem (a SquashFS image mounted first, by a daemon
    that lives outside them), pivot; we end up inside it."""
    from chjoin import fs, ns

    ident = launch.identity
    daemon = None
    if launch.squash_mount is not None:
        from chjoin import image

        if launch.newroot == "(null)":
            log.info(f"using default mount point: {launch.squash_mount}")    # ch-run's line
        daemon = image.SquashDaemon(launch.image, launch.squash_mount, launch.environ,
                                    launch.fuse_single)
        log.clock.done("squashfs")
    ns.enter_outer(ident.host_uid, ident.host_gid)
    log.clock.done("namespaces")
    checkpoint("winner", "setup")
    root = launch.image
    if daemon is not None:
        root = daemon.mount()
        log.info(f"squashfs: {launch.image} mounted at {root} by {image.SQUASHFUSE}")
        log.clock.done("squashfs")
    proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)     # for the id maps
    try:
        fs.apply(fs.plan(launch), root, log)
        if launch.devices is not None:
            devices_inside(launch.devices, launch.verbosity, log)
        log.clock.done("filesystem")
        ns.enter_inner(ident.uid, ident.gid, proc)
    finally:
        os.close(proc)
    log.clock.done("namespaces")


def devices_inside(selection, verbosity, log):
    """-d, inside the new root, once per container (single, winner, SPANK builder): every device
    node the specs name must be in the container's /dev (the host's, never narrowed); the
    create-symlinks links are made in the -W layer; the image's own ldconfig runs on the
    libraries' directories. No host program runs."""
    import stat

    kinds = {"c": stat.S_ISCHR, "u": stat.S_ISCHR, "b": stat.S_ISBLK, "p": stat.S_ISFIFO}
    for path, kind, origin in selection.nodes:
        try:
            st = os.stat(path)
        except OSError as e:
            raise Fatal(f"CDI: device node not found: {path} ({origin}): {e.strerror}") from None
        if kind in kinds and not kinds[kind](st.st_mode):
            raise Fatal(f"CDI: not a device node of type {kind}: {path} ({origin})")
        log.debug(f"CDI: device node ok: {path} ({origin})")
    for target, link in selection.symlinks:
        if os.path.lexists(link):
            log.info(f"CDI: create-symlinks: exists, skipping: {link}")
            continue
        try:
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(target, link)
        except OSError as e:
            raise Fatal(f"CDI: create-symlinks: can't make {link} -> {target}: "
                        f"{e.strerror}") from None
        log.info(f"CDI: create-symlinks: {link} -> {target}")
    if selection.ldconfig:
        ldconfig(selection.ldconfig, verbosity, log)


def ldconfig(directories, verbosity, log):
    """Run the image's ldconfig on `directories`, as ch-run 0.45 does (PATH=/sbin:/usr/sbin:
    $PATH, -v above -vv); its failure is ours."""
    path = ":".join(["/sbin", "/usr/sbin", os.environ.get("PATH", "")])
    program = next((f"{d}/ldconfig" for d in path.split(":")
                    if d and os.access(f"{d}/ldconfig", os.X_OK)), None)
    if program is None:
        raise Fatal(f"CDI: ldconfig not found in the image (in {path}): needed for the "
                    f"libraries in {' '.join(directories)}")
    if not os.access("/etc", os.W_OK):
        # an image the user does not own (a site's): its /etc refuses the new cache, even
        # under -W; a tmpfs over /etc shows the same files and takes it
        from chjoin import fs

        log.info("CDI: /etc not writable: a tmpfs over it for ldconfig's cache")
        fs.writable_directory("/etc", ("ld.so.cache", "ld.so.cache~"))
    argv = [program, *(["-v"] if verbosity > 2 else []), *directories]
    log.info(f"CDI: running: {' '.join(argv)}")
    pid = os.fork()
    if pid == 0:
        try:
            os.execve(program, argv, {**os.environ, "PATH": path})
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise Fatal(f"ldconfig: killed by signal {os.WTERMSIG(status)}")
    if os.WEXITSTATUS(status):
        raise Fatal(f"ldconfig: failed with {os.WEXITSTATUS(status)}")


def join(launch, group, log):
    """--join: build the `group`'s container (winner) or enter it (peer). No barrier: the
    winner's command starts as soon as the container is published, a peer's as soon as it is
    in."""
    from chjoin import ns

    clock = log.clock
    if group.count == 1:
        log.info("join: a group of one: nobody to wait for")
        clock.role = "winner"
        build(launch, log)
        return
    from chjoin import ipc

    ipc.stop_on_signals(group.tag)
    member = ipc.arrive(group.tag, group.count, launch.join_terms(), launch.join_timeout, log,
                        rendezvous_names(group.tag, launch.environ, log))
    clock.done("wait")
    if member.winner:
        clock.role = "winner"
        log.info("join: I won")
        log.info(f"join: won: building the container for {group.count} ranks")
        try:
            build(launch, log)
            holder = ns.spawn_holder(member.hold, clock, ipc.SIGNALS)
            clock.done("namespaces")
            member.publish(holder, ns.inodes())
        except BaseException as e:
            if isinstance(e, Fatal):
                member.failed(str(e), e.code)
            else:
                member.failed(f"{type(e).__name__}: {e}")
            raise
        log.info("join: winner initializing shared data")     # ch-run's lines
        log.info(f"join: {group.count - 1} peers left excluding myself")
        log.info("join: done")
        clock.done("join")
        return
    clock.role = "peer"
    log.info("join: I lost")
    try:
        ready = member.wait()
        clock.done("wait")
        checkpoint("peer", "join")
        log.info(f"joining namespaces of pid {ready.slots[0][0]}")    # ch-run's: the winner's
        pid = ns.join(ipc.keepers(ready), ready.inodes, log)
    except BaseException as e:
        member.leave(str(e))
        raise
    log.info(f"join: joined the container of winner pid {ready.slots[0][0]} through pid {pid}")
    if member.inside():
        member.adopt(ns.spawn_holder(member.hold, clock, ipc.SIGNALS))
    log.info("join: done")
    clock.done("join")


def rendezvous_names(tag, environ, log):
    """The names the group of `tag` meets under: keyed where this user has a private place for
    the key, else the plain ones (`chjoin.names`), with a -v line saying which."""
    from chjoin import names

    uid = os.geteuid()
    key, where = names.load_key(environ, uid)
    if key is None:
        log.info(f"join: no private place for the key of the rendezvous names ({where}): using "
                 f"the plain name {names.plain_name(uid, tag)}, which another user can take "
                 "first")
    else:
        log.info(f"join: rendezvous names keyed by {where}")
    return names.names(uid, tag, key)


def exec_command(cmd, environment, cwd, verbosity, libc, clock, closed_stdio=(), seccomp=None):
    """chdir and PWD, no_new_privs, --seccomp's filter, the timings report, quiet redirections,
    the launcher's closed stdio closed again, then execvpe with the container's PATH.

    PWD is the initial directory, set after every environment option (ch-run 0.45); -q sends
    the command's stdout to /dev/null, -qqq also its stderr."""
    try:
        os.chdir(cwd)
    except OSError as e:
        raise Fatal(f"can't cd to {cwd}: {e.strerror}") from None
    environment["PWD"] = cwd
    log = Log(verbosity, clock)
    for name, value in getattr(environment, "assigned", ()):
        log.debug(f"environment: {name}={value}")
    log.info(f"executing: {' '.join(cmd)}")
    libc.no_new_privs()
    if seccomp:
        install_seccomp(seccomp, libc, log)
    clock.report()
    stderr = os.dup(2)   # close-on-exec: our own error line still shows under -qqq
    for fd, level in ((1, -1), (2, -3)):
        if verbosity <= level:
            null = os.open("/dev/null", os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
    flush_stdio()
    for fd in closed_stdio:
        os.close(fd)
    import _signal      # not `signal`, whose enums cost every rank 4 ms

    for signum in (_signal.SIGPIPE, _signal.SIGXFSZ):   # Python's start-up ignores them; the
        _signal.signal(signum, _signal.SIG_DFL)         # command gets them as from a shell
    try:
        execvpe(cmd, environment)
    except OSError as e:
        os.dup2(stderr, 2)
        raise Fatal(f"can't exec: {cmd[0]}: {e.strerror}", EXIT_EXEC) from None


def install_seccomp(program, libc, log):
    """--seccomp: install the root-emulation filter `program` (chjoin.seccomp) in this process
    (every rank installs its own: a filter belongs to a thread and what it execs, never to a
    namespace), then check that it fakes what it should, as ch-run 0.45 checks it."""
    log.debug(f"seccomp: filter program has {len(program) // 8} instructions")
    try:
        libc.seccomp_filter(program)
    except OSError as e:
        raise Fatal(f"seccomp: can't install filter: {e.strerror}") from None
    if not libc.fake_mknod_works():
        raise Fatal("seccomp root emulation failed (is your architecture supported?)")


def execvpe(cmd, environment):
    """execvpe(3): run `cmd`, searched for in the container's $PATH. Not `os.execvpe`, which
    imports `warnings` at this point, from a host directory the container no longer shows."""
    if not cmd[0]:                      # as execvp(3); os.execve raises ValueError
        raise FileNotFoundError(2, "No such file or directory")
    if "/" in cmd[0]:
        os.execve(cmd[0], cmd, environment)
    found = None
    for directory in environment.get("PATH", os.defpath).split(":"):
        try:
            os.execve(f"{directory or '.'}/{cmd[0]}", cmd, environment)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
            if not isinstance(found, PermissionError):   # as execvp(3): EACCES wins
                found = e
    raise found or FileNotFoundError(2, "No such file or directory")
