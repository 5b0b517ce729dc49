"""The SPANK plugin's builder: `chjoin-spank-build IMAGE "CHJOIN OPTIONS" [NAME[:FLAG]]`, run by
slurmstepd once per node per step (spank/chjoin_spank.c), as the job's user, with the job's
environment and working directory, and a socket on fd 3.

It builds the container exactly as `chjoin IMAGE` does (`launch.build`: the same options, checks,
messages and exit codes), or with `--chjoin-name` creates or enters the named container as
`chjoin --name=NAME[:FLAG]` does (chjoin.named), and, from inside it, writes on fd 3 the
environment operations every task applies for itself (chjoin's rules: HOME, PATH, TMPDIR,
--set-env, --unset-env, CH_RUNNING, PWD), then waits for the plugin to close the socket: by then
the plugin holds the container's namespaces, and we exit. Each task enters them in C; no Python
runs per task.

Runs on every step's critical path, before any task starts: imports as little as the rank path.
The wire format, read by `apply_ops` in the plugin: "LENGTH\\n", then LENGTH bytes of records,
each a kind and its fields, every field NUL-terminated: `S NAME VALUE` (set), `X NAME VALUE`
(set, expanding `$NAME` items), `U GLOB` (unset names matching the extglob), `P` (the PATH
rule), `Q LEVEL` (-q), `D DIR` (working directory), `R` (ready).
"""

import os
import sys

from chjoin import cli
from chjoin import env as envmod
from chjoin.log import EXIT_USAGE, Fatal, Log, Timings, error

CHANNEL = 3
PLACEHOLDER = ("--", "true")     # make_launch wants a command; the tasks bring their own
_END = "\0end"                   # after --chjoin-args' words: no option's value
REFUSED = ("join", "join-ct", "join-tag", "join-pid", "join-timeout")


def split(text):
    """Split `text` into words as a POSIX shell does (quotes, backslashes; no expansion), without
    shlex's import of `re`. An unclosed quote is a usage error."""
    words, word, quote, i, started = [], [], None, 0, False
    while i < len(text):
        c = text[i]
        i += 1
        if quote == "'":
            if c == "'":
                quote = None
            else:
                word.append(c)
        elif quote == '"':
            if c == '"':
                quote = None
            elif c == "\\" and i < len(text) and text[i] in '"\\$`\n':
                word.append(text[i])
                i += 1
            else:
                word.append(c)
        elif c in " \t\n":
            if started:
                words.append("".join(word))
                word, started = [], False
        elif c in "'\"":
            quote, started = c, True
        elif c == "\\" and i < len(text):
            word.append(text[i])
            started = True
            i += 1
        else:
            word.append(c)
            started = True
    if quote:
        raise cli.Usage(f"--chjoin-args: unclosed {quote}: {text}")
    if started:
        words.append("".join(word))
    return words


def parse(image_ref, args, name=""):
    """--chjoin-args, IMAGE and --chjoin-name as chjoin's command line: (options, tokens),
    refusing what is no container option here (--join*, --name, --seccomp, --help, --version,
    --feature, stray words). With a name, IMAGE may be "": enter the running container of that
    name."""
    words = split(args)
    for token in cli.normalize([*words, _END], image_known=True):   # a value option last
        option, _, value = token[2:].partition("=")
        if value == _END:
            raise cli.Usage(f"--chjoin-args: option --{option} requires an argument")
    tokens = cli.normalize([*words, *([image_ref] if image_ref else []), *PLACEHOLDER],
                           image_known=True)
    for token in tokens[:len(tokens) - 2 - bool(image_ref)]:
        option = token[2:].partition("=")[0] if token.startswith("--") else None
        if option in REFUSED:
            raise cli.Usage(f"--chjoin-args: --{option}: the plugin already shares one "
                            "container per node")
        if option == "name":
            raise cli.Usage("--chjoin-args: --name: give srun --chjoin-name=NAME[:FLAG]")
        if option == "seccomp":
            raise cli.Usage("--chjoin-args: --seccomp: not under the SPANK plugin: its tasks "
                            "are entered and exec'd by slurmstepd, where no per-process filter "
                            "is installed (use srun chjoin --join --seccomp)")
        if option in ("help", "usage", "version", "feature", "warnings", "test"):
            raise cli.Usage(f"--chjoin-args: --{option} is no container option")
    if name:
        tokens = [f"--name={name}", *tokens]
    elif not image_ref:
        raise cli.Usage("no image: give --chjoin-image=IMAGE or --chjoin-name=NAME")
    options, found, command = cli.parse(tokens)
    if found != (image_ref or None) or tuple(command) != PLACEHOLDER[1:]:
        raise cli.Usage(f"--chjoin-args: not an option: {found}")
    return options, tokens


def operations(launch):
    """The records every task applies, in chjoin's order (env.build, then PWD): read inside the
    container, where the image's /root and /ch/environment are."""
    home = (f"/home/{launch.identity.user_name}" if launch.home else
            "/root" if os.path.isdir("/root") else "/")
    records = [("S", "HOME", home), ("P",), ("U", "TMPDIR")]
    for op in launch.env_ops:
        if isinstance(op, envmod.Unset):
            envmod.glob_match(op.pattern, "")      # a malformed pattern fails here, once
            records.append(("U", op.pattern))
            continue
        pairs = (op.pairs if isinstance(op, envmod.SetVars) else
                 envmod.read_file(envmod.IMAGE_ENVIRONMENT, op.delimiter))
        records += [("X" if op.expand else "S", name, value) for name, value in pairs]
    cwd = "/" if launch.cd is None else launch.cd
    if not cwd:                         # as chdir(2) would say in the task
        raise Fatal("can't cd to : No such file or directory")
    records += [("S", "CH_RUNNING", envmod.CH_RUNNING), ("S", "PWD", cwd), ("D", cwd),
                ("Q", str(launch.verbosity)), ("R",)]
    return records


MAX_BODY = 4 << 20      # spank/ops.h OPS_MAX: the plugin refuses a longer channel


def encode(records):
    """The channel: "LENGTH\\n", then each record's fields NUL-terminated. A field holding a NUL
    would shift the framing, and one over the plugin's maximum would be refused: a `Fatal`."""
    fields = [os.fsencode(field) for record in records for field in record]
    for field in fields:
        if b"\0" in field:
            raise Fatal(f"the environment holds a NUL byte: {os.fsdecode(field[:64])!r}")
    body = b"".join(field + b"\0" for field in fields)
    if len(body) > MAX_BODY:
        raise Fatal(f"the environment operations take {len(body)} bytes: over the SPANK "
                    f"plugin's {MAX_BODY}")
    return b"%d\n" % len(body) + body


def serve(data):
    """Hand the operations to the plugin, then wait until it has taken the namespaces (EOF)."""
    view = memoryview(data)
    while view:
        view = view[os.write(CHANNEL, view):]
    while os.read(CHANNEL, 4096):
        pass


def main(argv=None):
    """Entry point: build, serve, exit 0; or one `chjoin[PID]: error:` line and chjoin's exit
    code, which the plugin gives every task of the step."""
    argv = sys.argv[1:] if argv is None else argv
    clock = Timings()
    try:
        if len(argv) not in (2, 3):
            raise cli.Usage('usage: chjoin-spank-build IMAGE "CHJOIN OPTIONS" [NAME[:FLAG]] '
                            '(run by the SPANK plugin, with a socket on fd 3)')
        options, tokens = parse(*argv)
        launch = cli.make_launch(argv[0] or None, PLACEHOLDER[1:], options, tokens, os.environ,
                                 clock)
        clock.open(launch.timings)
        clock.role = "builder"
        if launch.name is not None:     # --chjoin-name: create it, or enter the running one
            from chjoin import named

            named.run(launch, Log(launch.verbosity, clock))
        else:
            from chjoin import launch as launchmod

            launchmod.build(launch, Log(launch.verbosity, clock))
        data = encode(operations(launch))
        clock.done("environment")
        clock.report()
        serve(data)
    except cli.Usage as e:
        error(str(e))
        sys.exit(EXIT_USAGE)
    except (Fatal, OSError) as e:
        cli.exit_failed(e, clock)
