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
    log.info(f"image: {launch.image}; container ids {ident.uid}:{ident.gid}")
    if launch.name is not None:
        from chjoin import named

        named.run(launch, log)
    elif launch.join_pid is not None:
        log.info(f"join: joining namespaces of pid {launch.join_pid}")
        ns.join_pid(launch.join_pid)
        clock.done("join")
        log.info(f"join: joined the namespaces of pid {launch.join_pid}")
    elif launch.join:
        join(launch, log)
    else:
        build(launch, log)
    home = f"/home/{ident.user_name}" if launch.home else None
    environment = envmod.build(launch.environ, launch.env_ops, home, os.path.isdir("/root"))
    clock.done("environment")
    exec_command(launch.command, environment, launch.cd or "/", launch.verbosity, libc,
                 clock, closed_stdio)


def build(launch, log):
    """Make the container: namespaces, filesystem (a SquashFS image mounted first, by a daemon
    that lives outside them), pivot; we end up inside it."""
    from chjoin import fs, ns

    ident = launch.identity
    daemon = None
    if launch.squash_mount is not None:
        from chjoin import image

        daemon = image.SquashDaemon(launch.image, launch.squash_mount, launch.environ)
        log.clock.done("squashfs")
    ns.enter_outer(ident.host_uid, ident.host_gid)
    log.clock.done("namespaces")
    checkpoint("winner", "setup")
    root = launch.image
    if daemon is not None:
        root = daemon.mount()
        log.info(f"squashfs: {launch.image} mounted at {root} by {image.SQUASHFUSE}")
        log.clock.done("squashfs")
    fs.apply(fs.plan(launch), root, log)
    log.clock.done("filesystem")
    ns.enter_inner(ident.uid, ident.gid)
    log.clock.done("namespaces")


def join(launch, log):
    """--join: find the group, then build its container (winner) or enter it (peer). No
    barrier: the winner's command starts as soon as the container is published, a peer's as
    soon as it is in."""
    from chjoin import ns, peers

    clock = log.clock
    group = peers.find(launch.environ, peers.this_process(launch.environ), launch.join_tag,
                       launch.join_count)
    clock.group = (group.tag, group.count)
    log.info(f"join: peer group tag {group.tag} (from {group.tag_source})")
    log.info(f"join: peer group size {group.count} (from {group.count_source})")
    log.info(f"join: 1 {group.count} {group.tag} 0")       # ch-run's line, which scripts read
    clock.done("discovery")
    if group.count == 1:
        log.info("join: a group of one: nobody to wait for")
        clock.role = "winner"
        build(launch, log)
        return
    from chjoin import ipc

    ipc.stop_on_signals(group.tag)
    member = ipc.arrive(group.tag, group.count, launch.join_terms(), launch.join_timeout, log)
    clock.done("wait")
    if member.winner:
        clock.role = "winner"
        log.info("join: I won")
        log.info(f"join: won: building the container for {group.count} ranks")
        try:
            build(launch, log)
            holder = ns.spawn_holder(member.hold, clock)
            clock.done("namespaces")
            member.publish(holder, ns.inodes())
        except BaseException as e:
            if isinstance(e, Fatal):
                member.failed(str(e), e.code)
            else:
                member.failed(f"{type(e).__name__}: {e}")
            raise
        clock.done("join")
        return
    clock.role = "peer"
    log.info("join: I lost")
    try:
        ready = member.wait()
        clock.done("wait")
        checkpoint("peer", "join")
        pid = ns.join(ipc.keepers(ready), ready.inodes, log)
    except BaseException as e:
        member.leave(str(e))
        raise
    log.info(f"join: joined the container of winner pid {ready.slots[0][0]} through pid {pid}")
    if member.inside():
        member.adopt(ns.spawn_holder(member.hold, clock))
    clock.done("join")


def exec_command(cmd, environment, cwd, verbosity, libc, clock, closed_stdio=()):
    """chdir and PWD, no_new_privs, the timings report, quiet redirections, the launcher's closed
    stdio closed again, then execvpe with the container's PATH.

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
    try:
        execvpe(cmd, environment)
    except OSError as e:
        os.dup2(stderr, 2)
        raise Fatal(f"can't exec: {cmd[0]}: {e.strerror}", EXIT_EXEC) from None


def execvpe(cmd, environment):
    """execvpe(3): run `cmd`, searched for in the container's $PATH. Not `os.execvpe`, which
    imports `warnings` at this point, from a host directory the container no longer shows."""
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
