"""The `chjoin` command: ch-run's options turned into a `Launch`, handed to `chjoin.launch`.

`chjoin [OPTIONS] IMAGE -- CMD [ARG...]`. The options are a table (`OPTIONS`) that the parser,
`normalize`, and `--help` all read. `normalize` first rewrites the options (anywhere before `--`,
long ones possibly abbreviated, as glibc's getopt_long takes them for ch-run) into
`--long[=value]` form, ahead of the other words: that gives argp's meaning to the options whose
value is optional (`-W`, `--write-fake`, `--set-env`, `--set-env0`: a value only when attached)
and keeps the command-line order of the environment options. No option library: every rank on
every node parses its command line, and click alone cost each of them 20 ms of imports.
"""

import os
import sys

from chjoin import __version__
from chjoin import env as envmod
from chjoin.config import WRITE_FAKE_DEFAULT_SIZE, BindSpec, Identity, Launch
from chjoin.log import (EXIT_ERROR, EXIT_SQUASH, EXIT_USAGE, Fatal, Log, Timings, error,
                        flush_stdio, warnings_reprint)
from chjoin.peers import parse_int

IMAGE_ENV = "\0image"   # the value of a bare --set-env: the image's /ch/environment
USAGE = "chjoin [OPTIONS] IMAGE -- CMD [ARG...]"
NAMED_USAGE = "chjoin --name=NAME[:exec|auto] [OPTIONS] -- CMD [ARG...]"

# How an option takes its value: FLAG none, COUNT none and repeatable, VALUE one (the last one
# given wins), LIST one per use, OPTIONAL only when attached (`--x=V`, `-xV`), else a default;
# ACTION: done at once, in command-line order (--help, --version, --feature).
FLAG, COUNT, VALUE, LIST, OPTIONAL, ACTION = range(6)

# (long name, short letter, kind, metavar, help); `--help` lists them in this order.
OPTIONS = (
    ("abort-fatal", "", FLAG, "", "exit abnormally on error, maybe dumping core"),
    ("bind", "b", LIST, "SRC[:DST]",
     "bind-mount host SRC at guest DST (default: same as SRC); repeatable"),
    ("cd", "c", VALUE, "DIR", "initial working directory in the container"),
    ("cdi", "d", OPTIONAL, "KIND",
     "inject CDI resource(s) KIND (repeatable): every spec found if no KIND; "
     "VENDOR/CLASS[=NAME[,NAME...]] or a spec file (*.json, *.yaml); implies -W"),
    ("cdi-dirs", "", VALUE, "DIRS",
     "director(y|ies) containing CDI specs (default: $CH_RUN_CDI_DIRS, else "
     "/etc/cdi:/var/run/cdi)"),
    ("color", "", OPTIONAL, "WHEN",
     "specify when to use colored logging: auto (the default; when stderr is a terminal), "
     "yes, no (and their synonyms tty, if-tty, always, force, never, none)"),
    ("env-no-expand", "", FLAG, "", "don't expand $ in --set-env input"),
    ("feature", "", ACTION, "FEAT",
     "exit 0 if FEAT (extglob, json, overlayfs, seccomp, squash, tmpfs-xattrs, yaml) is "
     "supported, else 1"),
    ("fuse-single", "", FLAG, "", "serve a SquashFS image with a single-threaded FUSE daemon"),
    ("gid", "g", VALUE, "GID", "run as GID within the container"),
    ("home", "", FLAG, "", "bind host $HOME at guest /home/$USER (implies -W)"),
    ("no-passwd", "", FLAG, "", "don't bind-mount generated /etc/{passwd,group}"),
    ("join", "j", FLAG, "",
     "use the same container as the other ranks of this launch on this node: one rank "
     "builds it, the others join it"),
    ("join-ct", "", VALUE, "N",
     "number of ranks in the group on this node (default: from the launcher's "
     "environment); implies --join"),
    ("join-tag", "", VALUE, "TAG",
     "name of the group (default: from the launcher's job and step, else the parent pid); "
     "implies --join"),
    ("join-pid", "", VALUE, "PID", "join the container of process PID"),
    ("join-timeout", "", VALUE, "SECONDS",
     "late ranks may join until SECONDS after the group's first one arrived; then its "
     "container is no longer kept for them (default: $CHJOIN_JOIN_TIMEOUT, else 30)"),
    ("keep", "", VALUE, "DURATION",
     "with --name: end the container DURATION (30, 90s, 10m, 2h, 1d) after its last process "
     "exits (default: when chjoinctl stop ends it, or under Slurm the job)"),
    ("mount", "m", VALUE, "DIR",
     "SquashFS image: mount it at DIR, in the container's own mount namespace (default: "
     "/var/tmp/$USER.ch/mnt, created if missing)"),
    ("name", "", VALUE, "NAME[:FLAG]",
     "run in the named container NAME, kept after its ranks exit: FLAG create builds it, exec "
     "enters a running one (then IMAGE may be omitted: chjoin --name=NAME -- CMD), auto "
     "(default) whichever applies; under Slurm NAME belongs to the job"),
    ("test", "", VALUE, "TEST", "do test TEST (log, log-fail: ch-run's logging tests)"),
    ("quiet", "q", COUNT, "",
     "print less: -q hides CMD's stdout, -qq also warnings, -qqq also CMD's stderr"),
    ("seccomp", "", FLAG, "",
     "fake success for some syscalls with seccomp(2): chown, setuid, setgroups, mknod of "
     "devices... (root emulation for package managers, with -W)"),
    ("storage", "s", VALUE, "DIR",
     "storage directory (default: $CH_IMAGE_STORAGE or /var/tmp/$USER.ch)"),
    ("set-env", "", OPTIONAL, "ARG",
     "set variables: VAR=VAL, or a host file of such lines; no ARG: the image's "
     "/ch/environment"),
    ("set-env0", "", OPTIONAL, "ARG", "like --set-env, but the file's items are separated by NUL"),
    ("timings", "", FLAG, "",
     "print how long each phase took on stderr, in one line (also $CHJOIN_TIMINGS=1; "
     "$CHJOIN_TIMINGS=FILE appends one JSON object per rank to FILE)"),
    ("private-tmp", "t", FLAG, "", "use a private tmpfs at /tmp"),
    ("uid", "u", VALUE, "UID", "run as UID within the container"),
    ("unsafe", "", FLAG, "",
     "do unsafe things: run a directory image inside the storage directory, -w on an image "
     "run by name"),
    ("unset-env", "", LIST, "GLOB",
     "unset variables whose names match GLOB (extglob, e.g. '!(HOME|PATH)')"),
    ("verbose", "v", COUNT, "", "print more (repeatable)"),
    ("warnings", "", ACTION, "NUM", "log NUM warnings and exit"),
    ("write", "w", FLAG, "", "mount the image read-write"),
    ("write-fake", "W", OPTIONAL, "SIZE",
     "overlay a tmpfs (default 12% of memory) on the image: writes vanish at exit"),
    ("help", "?", ACTION, "", "give this help list"),
    ("usage", "", ACTION, "", "give a short usage message"),
    ("version", "V", ACTION, "", "print the version and exit"),
)
_KIND = {name: kind for name, _, kind, _, _ in OPTIONS}
_LONG = {short: name for name, short, _, _, _ in OPTIONS if short}
CDI_ALL = "\0all"       # a bare -d / --cdi (chjoin.cdi.ALL): every spec
_DEFAULT = {"set-env": IMAGE_ENV, "set-env0": IMAGE_ENV, "write-fake": WRITE_FAKE_DEFAULT_SIZE,
            "color": "auto", "cdi": CDI_ALL}
_ACTION_VALUE = ("feature", "warnings")       # ACTION options that take a value
CHJOIN_ONLY = frozenset(("join-timeout", "keep", "name", "timings"))     # not ch-run 0.45's
COLOR_SYNONYMS = {"auto": "auto", "tty": "auto", "if-tty": "auto", "yes": "yes",
                  "always": "yes", "force": "yes", "no": "no", "never": "no", "none": "no"}
_ENV_OPTIONS = ("--set-env=", "--set-env0=", "--unset-env=", "--env-no-expand")


def normalize(args, permute=True, image_known=False):
    """Rewrite the options as `--long[=value]` tokens, in command-line order, followed by the
    other words: as glibc's getopt_long, which ch-run's argp uses, options are taken from
    anywhere before `--` (a word after IMAGE that starts with `-` is chjoin's, as in ch-run), and
    a long option may be shortened to any prefix that names one option. The words: those before
    `--`, then `--` and those after it, if it was given. `permute=False` ($POSIXLY_CORRECT)
    ends the options at the first other word, as getopt does then: IMAGE, `--`, and CMD word
    for word. `image_known`: no word is IMAGE (the SPANK builder's --chjoin-args)."""
    out, words = [], []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":
            return out + words + args[i - 1:]
        if not token.startswith("-") or token == "-":
            if not permute:         # one `--` right after IMAGE is still ours, as in ch-run
                rest = args[i:]
                return out + [token, "--"] + rest[rest[:1] == ["--"]:]
            words.append(token)
            continue
        if token.startswith("--"):
            name, eq, attached = token[2:].partition("=")
            name = long_name(name)
            kind = _KIND.get(name)
            if eq or kind is None:
                out.append(f"--{name}{eq}{attached}" if kind is not None else token)
            elif kind == OPTIONAL:
                value = _DEFAULT[name]
                if name == "cdi" and _cdi_value_follows(args, i, image_known or bool(words)):
                    value = args[i]
                    i += 1
                out.append(f"--{name}={value}")
            elif kind in (VALUE, LIST) or name in _ACTION_VALUE:
                if i < len(args):
                    out.append(f"--{name}={args[i]}")
                    i += 1
                else:
                    out.append(f"--{name}")
            else:
                out.append(f"--{name}")
            continue
        for k, c in enumerate(token[1:], start=2):
            name = _LONG.get(c)
            kind = _KIND.get(name)
            rest = token[k:]
            if kind in (VALUE, LIST):
                if not rest and i < len(args):
                    rest = args[i]
                    i += 1
                out.append(f"--{name}={rest}")
                break
            if kind == OPTIONAL:
                if (name == "cdi" and not rest
                        and _cdi_value_follows(args, i, image_known or bool(words))):
                    rest = args[i]
                    i += 1
                out.append(f"--{name}={rest or _DEFAULT[name]}")
                break
            out.append(f"--{name}" if name else f"-{c}")
    return out + words


def long_name(given):
    """The option that long option `given` names: itself, or the one option it is a prefix of
    (getopt_long's abbreviations); `given` as is when it names none (an unknown option). More
    than one is a `Usage` error, worded as getopt's, unless only one of them is ch-run's:
    chjoin's own options never make a ch-run command line ambiguous (`--join-t` is
    `--join-tag`, not `--join-timeout`)."""
    if given in _KIND or not given:
        return given
    matches = [name for name in _KIND if name.startswith(given)]
    if len(matches) > 1 and len(set(matches) - CHJOIN_ONLY) == 1:
        matches = list(set(matches) - CHJOIN_ONLY)      # ch-run's meaning of a ch-run prefix
    if len(matches) > 1:
        raise Usage(f"option '--{given}' is ambiguous; possibilities: "
                    + " ".join(f"'--{name}'" for name in matches))
    return matches[0] if matches else given


def _cdi_value_follows(args, i, image_seen):
    """A bare -d/--cdi followed by a word that is a CDI device name (and no path): the word is
    -d's value (ch-run would take it as IMAGE or CMD), unless it may be IMAGE: no IMAGE yet
    (`image_seen`) and nothing more but `-- CMD` after it."""
    if i >= len(args) or args[i].startswith("-"):
        return False
    if not image_seen and (i + 1 >= len(args) or args[i + 1] == "--"):
        return False          # `-d IMAGE -- CMD`: the word is IMAGE
    from chjoin import cdi

    return cdi.looks_like_request(args[i])


class Usage(Exception):
    """A command line that can't be a launch: ch-run's exit code 64."""


def parse(tokens):
    """Normalized `tokens` into (options, IMAGE, CMD): options by name, as FLAG/COUNT/VALUE/
    LIST/OPTIONAL give them, each value checked as it is met, as ch-run's parser does (so the
    first bad option is the one reported). ACTION options are done here and end the program.
    IMAGE is the first word; CMD the words after it, before and after `--`."""
    options = {name: [] if kind in (LIST, OPTIONAL) else 0 if kind in (FLAG, COUNT) else None
               for name, kind in _KIND.items()}
    i = 0
    while i < len(tokens) and tokens[i].startswith("-") and tokens[i] not in ("-", "--"):
        name, attached, value = tokens[i][2:].partition("=")
        kind = _KIND.get(name) if tokens[i].startswith("--") else None
        if kind is None:
            shown = tokens[i].partition("=")[0] if tokens[i].startswith("--") else tokens[i]
            raise Usage(f"unknown option: {shown} (see --help)")
        if attached and kind in (FLAG, COUNT) or (attached and kind == ACTION
                                                    and name not in _ACTION_VALUE):
            raise Usage(f"option --{name} takes no value")
        if not attached and kind in (VALUE, LIST) or (not attached and name in _ACTION_VALUE):
            raise Usage(f"option --{name} requires an argument")
        if kind == ACTION:
            sys.exit(_action(name, value, options))
        options[name] = (options[name] + 1 if kind in (FLAG, COUNT) else
                         options[name] + [value] if kind in (LIST, OPTIONAL) else value)
        check_value(name, value, options)
        i += 1
    logging_options(options)
    words = tokens[i:]
    before = words[:words.index("--")] if "--" in words else words
    after = words[len(before) + 1:]
    if options["name"] is not None and not before and words and "--" not in after:
        if not after:                   # --name with no IMAGE: `chjoin --name=NAME -- CMD`
            raise Usage(f"missing command: {NAMED_USAGE}")
        return options, None, after
    if before:
        return options, before[0], before[1:] + after
    if not after:
        raise Usage(f"missing IMAGE: {USAGE} (see --help)")
    command = after[1:]                 # `chjoin [OPTIONS] -- IMAGE [--] CMD`
    return options, after[0], command[command[:1] == ["--"]:]


def check_value(name, value, options):
    """Refuse a bad value as soon as its option is met, as ch-run's parse_opt does; the values
    are decided later (make_launch), from the whole command line."""
    if name in ("uid", "gid"):
        parse_id(value, f"--{name}")
    elif name in ("join-ct", "join-pid"):
        parse_int(value, f"--{name}")
    elif name == "bind":
        parse_bind(value)
    elif name == "mount" and not value:
        raise Fatal("mount point can't be empty string")
    elif name in ("set-env", "set-env0", "unset-env") and not value:
        raise Fatal("environment options: argument must have non-zero length")
    elif name in ("verbose", "quiet"):
        verbosity_of(options["verbose"], options["quiet"])
    elif name == "abort-fatal":         # from here on, as ch-run: a later bad value aborts
        from chjoin import log

        log.set_abort_fatal()
    elif name == "color":
        from chjoin import log

        if value not in COLOR_SYNONYMS:
            raise Fatal(f"--color: invalid arg: {value}")
        log.set_color(COLOR_SYNONYMS[value])


def logging_options(o):
    """--color, --abort-fatal and --test, which ch-run applies once the options are parsed
    (before IMAGE is looked at: `--test=log` needs none)."""
    from chjoin import log

    if o["color"]:
        when = COLOR_SYNONYMS.get(o["color"][-1])
        if when is None:
            raise Fatal(f"--color: invalid arg: {o['color'][-1]}")
        log.set_color(when)
    else:
        log.set_color("auto")
    if o["abort-fatal"]:
        log.set_abort_fatal()
    if o["test"] is not None:
        if o["test"] not in ("log", "log-fail"):
            raise Fatal(f"invalid --test argument: {o['test']}; see source code")
        verbosity = verbosity_of(o["verbose"], o["quiet"])
        for level, shown_from in (("trace", 3), ("debug", 2), ("info", 1), ("notice", 0)):
            if verbosity >= shown_from:
                log.emit(level, {"info": "verbose", "notice": "info"}.get(level, level))
        Log(verbosity).warning("warning")
        if o["test"] == "log-fail":
            raise Fatal('the program failed inexplicably ("log-fail" specified)')
        warnings_reprint()
        sys.exit(0)


def _action(name, value, options):
    """--help, --usage, --version, --feature=FEAT, --warnings=NUM: print or answer, and the exit
    code."""
    if name == "help":
        print(help_text(), end="")
        return 0
    if name == "usage":
        print(usage_text(), end="")
        return 0
    if name == "version":
        print(__version__)
        return 0
    if name == "warnings":
        count = parse_int(value, "--warnings")
        log = Log(verbosity_of(options["verbose"], options["quiet"]))
        for n in range(1, count + 1):
            log.warning(f"this is warning {n}!")
        warnings_reprint()      # ch-run's exit handler reprints them, even on success
        return 0
    return feature(value)


def feature(name):
    """--feature=FEAT: 0 if supported, 1 if known but not supported here."""
    if name in ("extglob", "json"):
        return 0
    if name == "yaml":
        import importlib.util

        return 0 if importlib.util.find_spec("yaml") else 1
    if name == "overlayfs":
        with open("/proc/filesystems") as f:
            return 0 if "\toverlay\n" in f.read() else 1
    if name == "squash":
        from chjoin import image

        return 0 if image.squashfs_supported(os.environ) else 1
    if name == "seccomp":
        return 0
    if name == "tmpfs-xattrs":
        from chjoin import ns

        return 0 if ns.tmpfs_user_xattrs() else 1
    raise Fatal(f"unknown feature: {name}")


def usage_text(width=79):
    """--usage: argp's short usage message: the flags, the short options with values, then
    every long option, wrapped."""
    flags = "".join(sorted((short for _, short, kind, _, _ in OPTIONS
                            if short and kind in (FLAG, COUNT, ACTION)),
                           key=lambda c: (c != "?", c.lower(), c.isupper())))
    words = [f"[-{flags}]"]
    for name, short, kind, metavar, _ in OPTIONS:
        if short and kind in (VALUE, LIST):
            words.append(f"[-{short} {metavar}]")
        elif short and kind == OPTIONAL:
            words.append(f"[-{short}[{metavar}]]")
    for name, short, kind, metavar, _ in sorted(OPTIONS):
        if kind == OPTIONAL:
            words.append(f"[--{name}[={metavar}]]")
        elif metavar:
            words.append(f"[--{name}={metavar}]")
        else:
            words.append(f"[--{name}]")
    words += USAGE.split()[2:]
    lines, line = [], "Usage: chjoin"
    for word in words:
        if len(line) + 1 + len(word) > width:
            lines.append(line)
            line = " " * 12 + word
        else:
            line += " " + word
    return "\n".join(lines + [line]) + "\n"


def help_text(width=80):
    """--help: the usage line, what chjoin does, and the options as ch-run's argp lays them out."""
    import textwrap

    about = ("Run CMD in an unprivileged container made from IMAGE: a directory, a SquashFS "
             "file, the name of an image in the storage directory, or / (the host's own tree, "
             "in new namespaces). Without CMD, or with CMD -, the image's ENTRYPOINT and CMD "
             "(/ch/metadata.json) make the command. With --join, the ranks of one launch on "
             "one node share one container.")
    lines = [f"Usage: {USAGE}", "", *textwrap.wrap(about, width), ""]
    for name, short, kind, metavar, text in OPTIONS:
        names = f"-{short}, --{name}" if short else f"    --{name}"
        if kind == OPTIONAL:
            names += f"[={metavar}]"
        elif metavar:
            names += f"={metavar}"
        body = textwrap.wrap(text, width - 30)
        lines.append(f"  {names:<26}  {body[0]}" if len(names) <= 26 else f"  {names}")
        lines += [" " * 30 + more for more in body[1 if len(names) <= 26 else 0:]]
    lines += ["", "Example:", "", "  $ chjoin /data/foo -- echo hello", "  hello", ""]
    return "\n".join(lines)


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


def env_ops(tokens, cdi_env=()):
    """The environment operations in command-line order, host files read now; each -d's
    environment (`cdi_env`, one tuple of pairs per -d) where that -d is, as ch-run does.
    --env-no-expand applies to every --set-env, wherever it stands (ch-run 0.45)."""
    ops = []
    options = tokens[:next((i for i, t in enumerate(tokens)
                            if t == "--" or not t.startswith("--")), len(tokens))]
    expand = "--env-no-expand" not in options
    cdi_env = list(cdi_env)
    for token in options:
        if token.startswith("--cdi=") and cdi_env:
            pairs = cdi_env.pop(0)
            if pairs:
                ops.append(envmod.SetVars(pairs, False))
            continue
        if token == "--env-no-expand" or not token.startswith(_ENV_OPTIONS):
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
    join = {"join": bool(o["join"] or o["join-ct"] is not None or o["join-tag"] is not None)}
    if o["join-ct"] is not None:
        join["join_count"] = parse_int(o["join-ct"], "--join-ct")
    join["join_tag"] = o["join-tag"]
    if o["join-pid"] is not None:
        pid = parse_int(o["join-pid"], "--join-pid")
        if pid != 0 and join["join"]:
            raise Fatal("--join-pid can't be combined with --join, --join-ct or --join-tag")
        join["join_pid"] = pid or None
    timeout, source = o["join-timeout"], "--join-timeout"
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


NAME_MODES = ("auto", "create", "exec")


def name_options(o, image_ref):
    """--name NAME[:FLAG] and --keep as `Launch` fields, checked; {} without --name."""
    if o["name"] is None:
        if o["keep"] is not None:
            raise Fatal("--keep: only with --name")
        return {}
    name, colon, mode = o["name"].rpartition(":") if ":" in o["name"] else (o["name"], "", "")
    mode = mode if colon else "auto"
    if not name or "\0" in name or "/" in name or len(name) > 128:
        raise Fatal(f"--name: not a name: {o['name']!r} (1 to 128 characters, no /)")
    if mode not in NAME_MODES:
        raise Fatal(f'--name: flag must be "auto", "create" or "exec", not {mode!r}')
    if o["join-pid"] is not None:
        raise Fatal("--name can't be combined with --join-pid")
    if image_ref is None and mode == "create":
        raise Fatal(f"--name {name}:create: no IMAGE to create it from")
    return {"name": name, "name_mode": mode,
            "keep": 0.0 if o["keep"] is None else parse_duration(o["keep"], "--keep")}


def parse_duration(text, option):
    """`30`, `90s`, `10m`, `2h`, `1d` in seconds (positive)."""
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in "smhd" and text[-1:] else text
    try:
        seconds = float(number) * scale
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 1e9:
        raise Fatal(f"{option}: must be a positive duration (30, 90s, 10m, 2h, 1d), not {text!r}")
    return seconds


def given_terms(o, image_ref):
    """Labels of the join terms (`Launch.join_terms`) this command line sets: what an attach to
    a named container must agree on; a term it leaves unset is the container's."""
    given = ["image"] * (image_ref is not None)
    given += ["uid:gid"] * (o["uid"] is not None or o["gid"] is not None)
    given += ["write mode"] * bool(o["write"] or o["write-fake"] or o["home"] or o["cdi"])
    given += ["mount options"] * bool(o["bind"] or o["home"] or o["private-tmp"] or
                                      o["no-passwd"] or o["cdi"])     # -d is a mount option
    return tuple(given)


def timings_target(flag, environ):
    """Where --timings / $CHJOIN_TIMINGS send the report: "stderr", a file's absolute path, or
    None. The variable says 1 (stderr), 0 or nothing (off), or names the file."""
    value = environ.get("CHJOIN_TIMINGS", "")
    if flag or value == "1":
        return "stderr"
    if value in ("", "0"):
        return None
    return os.path.abspath(value)


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


def find_image(image_ref, o, user_name, environ, log):
    """The image IMAGE names, found as ch-run finds it, with ch-run's storage warnings; --unsafe
    allows a directory image inside storage, and -w on an image run by name."""
    from chjoin import image as imagemod

    storage = o["storage"]
    if storage is not None and not os.path.exists(storage):
        log.warning(f"storage directory not found: {storage}")
    found = imagemod.find(image_ref, imagemod.default_storage(environ, user_name)
                          if storage is None else storage,
                          bool(o["unsafe"]), log.warning if storage is None else None,
                          log.warning)
    if found.by_name and o["write"] and not o["unsafe"]:
        raise Fatal("--write invalid when running by name")
    return found


def storage_of(o, user_name, environ):
    """The storage directory, as ch-run's -v line names it (made absolute where it exists)."""
    from chjoin import image as imagemod

    storage = o["storage"]
    if storage is None:
        storage = imagemod.default_storage(environ, user_name)
    return os.path.realpath(storage) if os.path.exists(storage) else storage


def squash_mount_of(found, o, user_name, log):
    """Where a SquashFS image is mounted (-m, made absolute; else ch-run's default), or None for
    a directory image, for which -m is ignored with ch-run's warning."""
    if not found.squashfs:
        if o["mount"] is not None:
            log.warning("--mount invalid with directory image, ignoring")
        return None
    from chjoin import image as imagemod

    if o["write"]:
        raise Fatal("--write invalid with SquashFS image: it is read-only (-W overlays a "
                    "tmpfs on it)", EXIT_SQUASH)
    return os.path.abspath(o["mount"] or imagemod.default_mount(user_name))


def make_launch(image_ref, cmd, o, tokens, environ, clock):
    """Check every option as ch-run does and decide the whole launch; touches nothing, and
    prints ch-run's warnings (and, from -v, its notes) about what it decided."""
    verbosity = verbosity_of(o["verbose"], o["quiet"])
    log = Log(verbosity, clock)
    binds = tuple(parse_bind(b) for b in o["bind"])
    identity = identity_of(o["uid"], o["gid"], environ)
    devices = None
    if o["cdi-dirs"] == "":
        raise Fatal("--cdi-dirs: PATHS must be non-empty")
    if o["cdi"]:
        from chjoin import cdi

        devices = cdi.select(o["cdi"], o["cdi-dirs"], environ, log)
    ops = env_ops(tokens, devices.env if devices else ())
    write_fake = o["write-fake"][-1] if o["write-fake"] else None
    if devices is not None and write_fake is None and not o["write"]:
        write_fake = WRITE_FAKE_DEFAULT_SIZE        # -d implies -W, silently, as in ch-run
    home = None
    if o["home"]:
        home = environ.get("HOME")
        if not home:
            raise Fatal("--home: $HOME not set")
        write_fake = write_fake or WRITE_FAKE_DEFAULT_SIZE
    join = join_options(o, environ)
    named = name_options(o, image_ref)
    if (join["join"] or named) and any(os.path.normpath("/" + b.dst.lstrip("/")) == "/proc"
                                       for b in binds):
        raise Fatal(f"--bind: /proc can't be replaced with --{'join' if join['join'] else 'name'}"
                    ": its ranks and holder find each other through it")
    clock.done("parse")
    generate_passwd = not o["no-passwd"]
    if image_ref is None:       # --name, entering a running container: it has its image
        from chjoin.image import Image

        found, squash_mount = Image("", by_name=False), None
    else:
        found = find_image(image_ref, o, identity.user_name, environ, log)
        squash_mount = squash_mount_of(found, o, identity.user_name, log)
    newroot = found.path            # ch-run's -v `newroot:`: a SquashFS image's is its -m
    if squash_mount is not None:
        newroot = os.path.realpath(o["mount"]) if o["mount"] else "(null)"
    if found.path == "/":       # the host's root as image
        if write_fake is not None:
            raise Fatal(f"{'--home' if home else '--cdi' if devices else '--write-fake'} "
                        "invalid with the host's root as image: there is no image to overlay")
        log.info("image is the host's root (/): new namespaces on the host's own tree, "
                 "no default binds, --no-passwd; this is not a container")
        generate_passwd = False
    if generate_passwd and not identity.passwd_entry:
        log.info(f"UID {identity.uid} not found; using dummy info")
    if generate_passwd and not identity.group_name:
        log.info(f"GID {identity.gid} not found; using dummy info")
    if "PATH" not in environ:
        log.warning("$PATH not set")
    clock.done("image")
    return Launch(image=found.path, image_ref=image_ref, command=tuple(cmd), identity=identity,
                  squash_mount=squash_mount, storage=storage_of(o, identity.user_name, environ),
                  newroot=newroot,
                  seccomp=bool(o["seccomp"]), fuse_single=bool(o["fuse-single"]),
                  unsafe=bool(o["unsafe"]),
                  binds=binds, cd=o["cd"], write=bool(o["write"]), write_fake=write_fake,
                  home=home, private_tmp=bool(o["private-tmp"]),
                  host_tmp=environ.get("TMPDIR") or "/tmp",
                  generate_passwd=generate_passwd, env_ops=ops, verbosity=verbosity,
                  devices=devices, given=given_terms(o, image_ref),
                  timings=timings_target(o["timings"], environ), environ=dict(environ),
                  **join, **named)


def undo_locale_coercion(environ=os.environ):
    """Give `environ` back the LC_CTYPE this process was started with. Python started in the C
    locale sets LC_CTYPE=C.UTF-8 in its own environment (PEP 538), which the command would then
    inherit: an image without that locale warns in every shell and Perl. The kernel's copy of
    the initial environment says what it was; it is read only when coercion may have happened."""
    if "LC_CTYPE" not in environ or environ.get("LC_ALL"):
        return
    try:
        with open("/proc/self/environ", "rb") as f:
            initial = f.read()
    except OSError:
        return
    for item in initial.split(b"\0"):
        if item.startswith(b"LC_CTYPE="):
            environ["LC_CTYPE"] = os.fsdecode(item[len(b"LC_CTYPE="):])
            return
    del environ["LC_CTYPE"]


def main(argv=None):
    """Console entry point: parse, launch, and turn every failure into one line and an exit code."""
    import _signal      # not `signal`, whose enums cost every rank 4 ms

    undo_locale_coercion()

    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)     # Ctrl-C ends us as it does ch-run,
    clock = Timings()                                       # never with a traceback
    closed_stdio = open_closed_stdio()
    try:
        try:
            tokens = normalize(sys.argv[1:] if argv is None else argv,
                               permute="POSIXLY_CORRECT" not in os.environ)
            options, image, command = parse(tokens)
        except Usage as e:
            error(str(e))
            sys.exit(EXIT_USAGE)
        launch = make_launch(image, command, options, tokens, os.environ, clock)
        clock.open(launch.timings)
        from chjoin.launch import run

        run(launch, clock, closed_stdio)
    except (Fatal, OSError) as e:
        exit_failed(e, clock)


def exit_failed(e, clock):
    """End a failed launch as ch-run does: its timings, one error line (a `Fatal`'s message, or
    an unexpected `OSError`'s), the warnings printed so far again, and the exit code."""
    from chjoin import log

    clock.report(failed=True)
    if isinstance(e, Fatal):
        error(str(e))
    else:
        error(f"{e.strerror or e}{': ' + e.filename if e.filename else ''}")
    if log.abort_fatal():        # --abort-fatal: as ch-run, abort(3) before any exit handler
        flush_stdio()
        os.abort()
    warnings_reprint()
    flush_stdio()
    sys.exit(e.code if isinstance(e, Fatal) else EXIT_ERROR)


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
