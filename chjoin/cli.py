"""The `chjoin` command: ch-run's options turned into a `Launch`, then the launch itself.

`chjoin [OPTIONS] IMAGE -- CMD [ARG...]`. Before click sees the arguments, `normalize` rewrites
the options in front of IMAGE into `--long=value` form. That gives argp's meaning to the options
whose value is optional (`-W`, `--write-fake`, `--set-env`, `--set-env0`: a value only when
attached) and keeps the command-line order of the environment options, which click's per-option
lists lose.
"""

import os
import sys

import click

from chjoin import __version__
from chjoin import env as envmod
from chjoin.config import WRITE_FAKE_DEFAULT_SIZE, BindSpec, Identity, Launch
from chjoin.peers import parse_int
from chjoin.log import EXIT_EXEC, EXIT_USAGE, Fatal, Log, checkpoint, error, flush_stdio

IMAGE_ENV = "\0image"   # the value of a bare --set-env: the image's /ch/environment

_SHORT_FLAGS = {"q": "quiet", "v": "verbose", "w": "write", "t": "private-tmp", "V": "version",
                "j": "join"}
_SHORT_VALUED = {"b": "bind", "c": "cd", "g": "gid", "u": "uid", "s": "storage"}
_SHORT_OPTIONAL = {"W": "write-fake"}
_LONG_VALUED = {"bind", "cd", "gid", "uid", "storage", "unset-env", "feature", "join-ct",
                "join-tag", "join-pid", "join-timeout"}
_LONG_OPTIONAL = {"set-env": IMAGE_ENV, "set-env0": IMAGE_ENV,
                  "write-fake": WRITE_FAKE_DEFAULT_SIZE}
_ENV_OPTIONS = ("--set-env=", "--set-env0=", "--unset-env=", "--env-no-expand")


def normalize(args):
    """Rewrite the options before IMAGE as `--long[=value]` tokens; the rest is left as is."""
    out = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--" or not token.startswith("-") or token == "-":
            return out + [token] + list(args[i:])
        if token.startswith("--"):
            name = token[2:]
            if "=" in name:
                out.append(token)
            elif name in _LONG_OPTIONAL:
                out.append(f"{token}={_LONG_OPTIONAL[name]}")
            elif name in _LONG_VALUED and i < len(args):
                out.append(f"{token}={args[i]}")
                i += 1
            else:
                out.append(token)
            continue
        for k, c in enumerate(token[1:], start=2):
            rest = token[k:]
            if c in _SHORT_VALUED:
                if not rest and i < len(args):
                    rest = args[i]
                    i += 1
                out.append(f"--{_SHORT_VALUED[c]}={rest}")
                break
            if c in _SHORT_OPTIONAL:
                out.append(f"--{_SHORT_OPTIONAL[c]}={rest or WRITE_FAKE_DEFAULT_SIZE}")
                break
            out.append(f"--{_SHORT_FLAGS[c]}" if c in _SHORT_FLAGS else f"-{c}")
    return out


def parse_id(text, option):
    value = parse_int(text, option)
    if value < 0:
        raise Fatal(f"{option}: must be non-negative")
    return value


def parse_bind(text):
    """`SRC[:DST]` into a `BindSpec`, refusing what ch-run refuses."""
    src, sep, dst = text.partition(":")
    if not src:
        raise Fatal("--bind: no source provided")
    if not sep:
        dst = src
    if not dst:
        raise Fatal("--bind: no destination provided")
    if dst == "/":
        raise Fatal("--bind: destination can't be /")
    if not dst.startswith("/"):
        raise Fatal("--bind: destination must be absolute")
    return BindSpec(src, dst)


def env_ops(tokens):
    """The environment operations in command-line order, host files read now."""
    ops = []
    expand = True
    for token in tokens:
        if token == "--" or not token.startswith("--"):
            break
        if token == "--env-no-expand":
            expand = False
            continue
        if not token.startswith(_ENV_OPTIONS):
            continue
        name, _, value = token[2:].partition("=")
        if not value:
            raise Fatal("environment options: argument must have non-zero length")
        delimiter = "\0" if name == "set-env0" else "\n"
        if name == "unset-env":
            ops.append(envmod.Unset(value))
        elif value == IMAGE_ENV:
            ops.append(envmod.ImageFile(delimiter, expand))
        elif "=" in value:
            ops.append(envmod.SetVars((envmod.parse_assignment(value, value),), expand))
        else:
            ops.append(envmod.SetVars(envmod.read_file(value, delimiter), expand))
    return tuple(ops)


def join_options(o, environ):
    """The --join options as `Launch` fields, checked as ch-run checks them."""
    join = {"join": bool(o["join"] or o["join_ct"] is not None or o["join_tag"] is not None)}
    if o["join_ct"] is not None:
        join["join_count"] = parse_int(o["join_ct"], "--join-ct")
    join["join_tag"] = o["join_tag"]
    if o["join_pid"] is not None:
        pid = parse_int(o["join_pid"], "--join-pid")
        if pid != 0 and join["join"]:
            raise Fatal("--join-pid can't be combined with --join, --join-ct or --join-tag")
        join["join_pid"] = pid or None
    timeout, source = o["join_timeout"], "--join-timeout"
    if timeout is None:
        timeout, source = environ.get("CHJOIN_JOIN_TIMEOUT"), "CHJOIN_JOIN_TIMEOUT"
    if timeout is not None:
        try:
            join["join_timeout"] = float(timeout)
        except ValueError:
            join["join_timeout"] = 0.0
        if not 0 < join["join_timeout"] < 1e6:
            raise Fatal(f"{source}: must be a positive number of seconds, not {timeout!r}")
    return join


def verbosity_of(verbose, quiet):
    if verbose and quiet:
        raise Fatal("--quiet incompatible with --verbose")
    if verbose > 3 or quiet > 3:
        raise Fatal(f"--{'verbose' if verbose else 'quiet'} can be specified at most thrice")
    return verbose - quiet


def identity_of(uid, gid, environ):
    """Container and host ids, and the names the generated /etc/passwd and /etc/group show."""
    import grp
    import pwd

    host_uid, host_gid = os.geteuid(), os.getegid()
    uid = host_uid if uid is None else parse_id(uid, "--uid")
    gid = host_gid if gid is None else parse_id(gid, "--gid")
    try:
        entry = pwd.getpwuid(uid)
        passwd_entry = (entry.pw_name, entry.pw_gecos)
    except KeyError:
        passwd_entry = ()
    try:
        group_name = grp.getgrgid(gid).gr_name
    except KeyError:
        group_name = ""
    user_name = environ.get("USER")
    if not user_name:
        try:
            user_name = pwd.getpwuid(host_uid).pw_name
        except KeyError:
            user_name = str(host_uid)
    return Identity(uid, gid, host_uid, host_gid, user_name, passwd_entry, group_name)


def _feature(ctx, _param, value):
    """--feature=FEAT: exit 0 if supported, 1 if known but not supported here."""
    if value is None or ctx.resilient_parsing:
        return
    if value == "extglob":
        ctx.exit(0)
    if value == "overlayfs":
        with open("/proc/filesystems") as f:
            ctx.exit(0 if "\toverlay\n" in f.read() else 1)
    if value in ("squash", "seccomp", "tmpfs-xattrs"):
        ctx.exit(1)
    raise Fatal(f"unknown feature: {value}")


def _version(ctx, _param, value):
    if value and not ctx.resilient_parsing:
        click.echo(__version__)
        ctx.exit(0)


HELP = """Run CMD in an unprivileged container made from IMAGE: a directory, or the name
of an image in the storage directory.

\b
Example:
  $ chjoin /data/foo -- echo hello
  hello
"""


@click.command(help=HELP, context_settings={"allow_interspersed_args": False,
                                            "help_option_names": ["--help", "-?"],
                                            "max_content_width": 100},
               options_metavar="[OPTIONS]", no_args_is_help=True)
@click.option("-b", "--bind", "binds", multiple=True, metavar="SRC[:DST]",
              help="Bind-mount host SRC at guest DST (default: same as SRC). Repeatable.")
@click.option("-c", "--cd", metavar="DIR", help="Initial working directory in the container.")
@click.option("--env-no-expand", is_flag=True, help="Don't expand $ in later --set-env values.")
@click.option("--feature", metavar="FEAT", expose_value=False, is_eager=True, callback=_feature,
              help="Exit 0 if FEAT (extglob, overlayfs, squash, seccomp) is supported, else 1.")
@click.option("-g", "--gid", metavar="GID", help="Run as GID within the container.")
@click.option("--home", is_flag=True, help="Bind host $HOME at guest /home/$USER (implies -W).")
@click.option("--no-passwd", is_flag=True, help="Don't bind-mount generated /etc/{passwd,group}.")
@click.option("-j", "--join", is_flag=True,
              help="Use the same container as the other ranks of this launch on this node: one "
                   "rank builds it, the others join it.")
@click.option("--join-ct", metavar="N",
              help="Number of ranks in the group on this node (default: from the launcher's "
                   "environment). Implies --join.")
@click.option("--join-tag", metavar="TAG",
              help="Name of the group (default: from the launcher's job and step, else the "
                   "parent pid). Implies --join.")
@click.option("--join-pid", metavar="PID", help="Join the container of process PID.")
@click.option("--join-timeout", metavar="SECONDS",
              help="Give up when the group is not complete after SECONDS (default: "
                   "$CHJOIN_JOIN_TIMEOUT, else 30).")
@click.option("-q", "--quiet", count=True,
              help="Print less: -q no warnings, -qq also CMD's stdout, -qqq also its stderr.")
@click.option("-s", "--storage", metavar="DIR",
              help="Storage directory (default: $CH_IMAGE_STORAGE or /var/tmp/$USER.ch).")
@click.option("--set-env", "set_env", multiple=True, metavar="[=ARG]",
              help="Set variables: VAR=VAL, or a host file of such lines; no ARG: the image's "
                   "/ch/environment.")
@click.option("--set-env0", "set_env0", multiple=True, metavar="[=ARG]",
              help="Like --set-env, but the file's items are separated by NUL.")
@click.option("-t", "--private-tmp", is_flag=True, help="Use a private tmpfs at /tmp.")
@click.option("-u", "--uid", metavar="UID", help="Run as UID within the container.")
@click.option("--unset-env", multiple=True, metavar="GLOB",
              help="Unset variables whose names match GLOB (extglob, e.g. '!(HOME|PATH)').")
@click.option("-v", "--verbose", count=True, help="Print more (repeatable).")
@click.option("-w", "--write", is_flag=True, help="Mount the image read-write.")
@click.option("-W", "--write-fake", metavar="[=SIZE]",
              help="Overlay a tmpfs (default 12%% of memory) on the image: writes vanish at exit.")
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_version, help="Print the version and exit.")
@click.argument("image", metavar="IMAGE")
@click.argument("command", nargs=-1, metavar="-- CMD [ARG...]")
@click.pass_context
def command(ctx, image, command, **options):
    cmd = list(command)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if not cmd:
        raise click.UsageError("missing command: chjoin [OPTIONS] IMAGE -- CMD [ARG...]")
    ctx.obj = make_launch(image, cmd, options, ctx.meta["tokens"], os.environ)


def make_launch(image_ref, cmd, o, tokens, environ):
    """Check every option as ch-run does and decide the whole launch; touches nothing."""
    from chjoin import image as imagemod

    verbosity = verbosity_of(o["verbose"], o["quiet"])
    binds = tuple(parse_bind(b) for b in o["binds"])
    identity = identity_of(o["uid"], o["gid"], environ)
    ops = env_ops(tokens)
    write_fake = o["write_fake"]
    home = None
    if o["home"]:
        home = environ.get("HOME")
        if not home:
            raise Fatal("--home failed: $HOME not set")
        write_fake = write_fake or WRITE_FAKE_DEFAULT_SIZE
    join = join_options(o, environ)
    storage = o["storage"] or imagemod.default_storage(environ)
    found = imagemod.find(image_ref, storage)
    if found.by_name and o["write"]:
        raise Fatal("--write invalid when running by name")
    return Launch(image=found.path, image_ref=image_ref, command=tuple(cmd), identity=identity,
                  binds=binds, cd=o["cd"], write=o["write"], write_fake=write_fake, home=home,
                  private_tmp=o["private_tmp"], host_tmp=environ.get("TMPDIR") or "/tmp",
                  generate_passwd=not o["no_passwd"], env_ops=ops, verbosity=verbosity,
                  environ=dict(environ), **join)


def run(launch, closed_stdio=()):
    """Build or join the container and exec the command in it; returns only by raising `Fatal`."""
    from chjoin import libc, ns

    log = Log(launch.verbosity)
    ident = launch.identity
    log.info(f"image: {launch.image}; container ids {ident.uid}:{ident.gid}")
    if launch.join_pid is not None:
        ns.join_pid(launch.join_pid)
        log.info(f"join: joined the namespaces of pid {launch.join_pid}")
    elif launch.join:
        join(launch, log)
    else:
        build(launch, log)
    home = f"/home/{ident.user_name}" if launch.home else None
    environment = envmod.build(launch.environ, launch.env_ops, home, os.path.isdir("/root"))
    exec_command(launch.command, environment, launch.cd or "/", launch.verbosity, libc,
                 closed_stdio)


def build(launch, log):
    """Make the container: namespaces, filesystem, pivot; we end up inside it."""
    from chjoin import fs, ns

    ident = launch.identity
    ns.enter_outer(ident.host_uid, ident.host_gid)
    checkpoint("winner", "setup")
    fs.apply(fs.plan(launch), launch.image, log)
    ns.enter_inner(ident.uid, ident.gid)


def join(launch, log):
    """--join: find the group, then build its container (winner) or enter it (peer)."""
    from chjoin import ns, peers

    group = peers.find(launch.environ, peers.this_process(launch.environ), launch.join_tag,
                       launch.join_count)
    log.info(f"join: peer group tag {group.tag} (from {group.tag_source})")
    log.info(f"join: peer group size {group.count} (from {group.count_source})")
    if group.count == 1:
        log.info("join: a group of one: nobody to wait for")
        build(launch, log)
        return
    from chjoin import ipc

    ipc.stop_on_signals(group.tag)
    member = ipc.arrive(group.tag, group.count, launch.join_terms(), launch.join_timeout, log)
    if member.winner:
        log.info(f"join: won: building the container for {group.count} ranks")
        try:
            build(launch, log)
            holder = ns.spawn_holder(member.holding, ipc.TICK)
        except BaseException as e:
            member.failed(str(e) if isinstance(e, Fatal) else f"{type(e).__name__}: {e}")
            raise
        log.info(f"join: holder pid {holder[0]} keeps the container until all have joined")
        member.publish(holder, ns.inodes())
        try:
            member.stay_until_all_inside(member.wait())
        except BaseException as e:
            member.leave(str(e))
            raise
        return
    try:
        record = member.wait()
        checkpoint("peer", "join")
        pid = ns.join(ipc.keepers(record), record.inodes)
    except BaseException as e:
        member.leave(str(e))
        raise
    log.info(f"join: joined winner's container through pid {pid}")
    member.inside()


def exec_command(cmd, environment, cwd, verbosity, libc, closed_stdio=()):
    """chdir, no_new_privs, quiet redirections, the launcher's closed stdio closed again, then
    execvpe with the container's PATH."""
    try:
        os.chdir(cwd)
    except OSError as e:
        raise Fatal(f"can't cd to {cwd}: {e.strerror}") from None
    libc.no_new_privs()
    for fd, level in ((1, -2), (2, -3)):
        if verbosity <= level:
            null = os.open("/dev/null", os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
    flush_stdio()
    for fd in closed_stdio:
        os.close(fd)
    try:
        os.execvpe(cmd[0], cmd, environment)
    except OSError as e:
        raise Fatal(f"can't execve(2): {cmd[0]}: {e.strerror}", EXIT_EXEC) from None


def main(argv=None):
    """Console entry point: parse, launch, and turn every failure into one line and an exit code."""
    closed_stdio = open_closed_stdio()
    tokens = normalize(sys.argv[1:] if argv is None else argv)
    try:
        launch = _parse(tokens)
        if isinstance(launch, int):
            sys.exit(launch)
        run(launch, closed_stdio)
    except Fatal as e:
        error(str(e))
        flush_stdio()
        sys.exit(e.code)
    except OSError as e:
        error(f"{e.strerror or e}{': ' + e.filename if e.filename else ''}")
        sys.exit(31)


def open_closed_stdio():
    """Put /dev/null on any of fds 0-2 we were started without, so that nothing we open lands
    there (and our messages never go into an IPC object); the command gets them closed again."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:
        null = os.open("/dev/null", os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
    return tuple(closed)


def _parse(tokens):
    """Run click over `tokens`: a `Launch`, or an exit code when there is nothing to launch."""
    try:
        with command.make_context("chjoin", list(tokens)) as ctx:
            ctx.meta["tokens"] = tokens
            command.invoke(ctx)
            return ctx.obj
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        error(e.format_message().splitlines()[0])
        return EXIT_USAGE
