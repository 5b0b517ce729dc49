"""Messages in ch-run's form, `chjoin[PID]: message` (`warning: ` or `error: ` before the message for
those levels, nothing for information and debugging), the exit codes that go with them, and
the per-phase timings of `--timings`.

Verbosity is a plain integer carried by the caller: -1..-3 for -q, 0 by default, 1..3 for -v.
As in ch-run 0.45, -q hides the command's stdout, -qq also warnings, -qqq also its stderr.
Fatal errors are exceptions (`Fatal`), printed once by the command line and turned into an exit
code there, so that no module below `cli` ever calls `sys.exit`. The warnings a launch printed
are kept, so that a launch that fails can print them again after its error, as ch-run does.
"""

import os
import sys
import time

# Exit codes, as ch-run 0.45 uses them.
EXIT_ERROR = 31
EXIT_EXEC = 49
EXIT_USAGE = 64
EXIT_SQUASH = 84


class Fatal(Exception):
    """An error that ends the launch: one line for the user, and ch-run's exit code."""

    def __init__(self, message, code=EXIT_ERROR):
        super().__init__(message)
        self.code = code


def os_error(what, err):
    """A `Fatal` for a failed system call: what failed, on which path, and the system's reason."""
    return Fatal(f"{what}: {err.strerror or err}")


_warnings_printed = []    # this process's warning lines, for warnings_reprint()
WARNINGS_SIZE = 4096      # ch-run keeps its warnings in a buffer of this size: the first fit,
LOCATION_SIZE = 16        # each with its " (ch-run.c:123)": count as many as ch-run would keep
_warnings_kept = [0]

# --color: ch-run's ANSI colours by level ("info" is chjoin's -v: ch-run's VERBOSE)
COLOURS = {"error": "\033[1;31m", "warning": "\033[0;31m", "notice": "\033[0;33m",
           "info": "\033[0;38;5;14m", "debug": "\033[0;38;5;6m", "trace": "\033[0;38;5;6m"}
RESET = "\033[0m"
_settings = {"color": False, "abort": False}


def _program_name():
    """The name our lines start with: `chjoin`, or `ch-run` when we were run through a link of
    that name (a drop-in ch-run), as ch-run names itself by how it was invoked."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "ch-run" if invoked == "ch-run" else "chjoin"


PROGRAM = _program_name()


def set_color(when):
    """--color[=WHEN]: "yes", "no", or "auto" (when stderr is a terminal)."""
    _settings["color"] = when == "yes" or (when == "auto" and os.isatty(2))


def set_abort_fatal():
    """--abort-fatal: a fatal error ends the process with abort(3) (SIGABRT, maybe a core)."""
    _settings["abort"] = True


def abort_fatal():
    return _settings["abort"]


def emit(level, message):
    """Write one message line on stderr; never raises, even with stderr closed. As in ch-run, only
    warnings and errors name their level."""
    prefix = f"{level}: " if level in ("warning", "error") else ""
    text = f"{PROGRAM}[{os.getpid()}]: {prefix}{message}"
    if level == "warning":
        _keep_warning(text)
    line = (f"{COLOURS[level]}{text}{RESET}\n" if _settings["color"] and level in COLOURS
            else text + "\n")
    try:
        os.write(2, line.encode(errors="replace"))
    except OSError:
        pass


def _keep_warning(text):
    size = len(text.encode(errors="replace")) + LOCATION_SIZE + 1
    if _warnings_kept[0] + size <= WARNINGS_SIZE:
        _warnings_kept[0] += size
        _warnings_printed.append(text + "\n")


def warnings_reprint():
    """After a failed launch's error line: the warnings it printed before, again, under ch-run's
    header, so that they are not lost above the error. Nothing when there were none."""
    if not _warnings_printed:
        return
    text = (f"{PROGRAM}[{os.getpid()}]: warning: reprinting first {len(_warnings_printed)} "
            "warning(s)\n")
    if _settings["color"]:
        text, end = COLOURS["warning"] + text, RESET
    else:
        end = ""
    try:
        os.write(2, (text + "".join(_warnings_printed) + end).encode(errors="replace"))
    except OSError:
        pass


class Log:
    """Leveled messages for one launch: `warning` shows unless -qq, `info` from -v, `debug` from
    -vv."""

    def __init__(self, verbosity=0, clock=None):
        self.verbosity = verbosity
        self.clock = clock or Timings()      # the launch's phase timings

    def warning(self, message):
        if self.verbosity >= -1:
            emit("warning", message)

    def info(self, message):
        if self.verbosity >= 1:
            emit("info", message)

    def debug(self, message):
        if self.verbosity >= 2:
            emit("debug", message)


def error(message):
    """Print the one line of a fatal error (always shown, whatever the verbosity)."""
    emit("error", message)


def flush_stdio():
    """Flush Python's buffers before an exec or exit, ignoring closed streams."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def checkpoint(role, phase):
    """Fault injection for the test suite: stop here (SIGSTOP) when $CHJOIN_TEST_STOP lists
    `role:phase` or `any:phase`, so that a test can kill this process at a known instant."""
    stops = os.environ.get("CHJOIN_TEST_STOP")
    if stops and (f"{role}:{phase}" in stops.split(",") or f"any:{phase}" in stops.split(",")):
        os.kill(os.getpid(), 19)


class Timings:
    """How long each phase of one rank took, for `--timings` and `$CHJOIN_TIMINGS`: one line on
    stderr, or one JSON object appended to a file (opened at once, since the file is a host path
    and the report is written from inside the container)."""

    PHASES = ("parse", "image", "discovery", "wait", "squashfs", "namespaces", "filesystem",
              "join", "environment", "hold")

    def __init__(self):
        self.started = self.last = time.perf_counter()
        self.startup_cpu = time.process_time()   # the interpreter's start-up, before our code
        self.took = {}
        self.role = "single"
        self.group = None         # (tag, count) when the rank joined a group
        self.fd = None            # where the report goes: None (nowhere), 2, or a file

    def done(self, phase):
        """`phase` ended now: the time since the last phase ended counts for it."""
        now = time.perf_counter()
        self.took[phase] = self.took.get(phase, 0.0) + now - self.last
        self.last = now

    def open(self, target):
        """Report to `target`: None, "stderr", or the path of a file to append to."""
        if target == "stderr":
            self.fd = 2
        elif target:
            try:
                self.fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                  0o644)
            except OSError as e:
                raise os_error(f"--timings: can't open {target}", e) from None

    def holding(self):
        """In the holder, just forked: from now on the timings are the holder's."""
        self.role, self.took, self.startup_cpu = "holder", {}, 0.0
        self.started = self.last = time.perf_counter()

    def report(self, failed=False):
        """Write this rank's timings, once; never raises."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        phases = [(p, self.took[p] * 1000) for p in self.PHASES if p in self.took]
        total = (self.last - self.started) * 1000
        if fd == 2:
            spent = "  ".join(f"{p} {ms:.1f}" for p, ms in phases)
            line = (f"chjoin[{os.getpid()}]: timings: {self.role}  {spent}  total {total:.1f} ms"
                    f" (start-up before that: {self.startup_cpu * 1000:.1f} ms cpu)"
                    f"{'; failed' if failed else ''}\n")
        else:
            fields = {"pid": os.getpid(), "host": os.uname().nodename, "role": self.role,
                      "failed": failed, "startup_cpu_ms": round(self.startup_cpu * 1000, 3),
                      "total_ms": round(total, 3)}
            if self.group:
                fields["tag"], fields["count"] = self.group
            fields.update((f"{p}_ms", round(ms, 3)) for p, ms in phases)
            line = "{" + ", ".join(f"{_json(k)}: {_json(v)}" for k, v in fields.items()) + "}\n"
        try:
            os.write(fd, line.encode(errors="replace"))
        except OSError:
            pass


def _json(value):
    """A number or string as JSON: the `json` module would cost every reporting rank 5 ms."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, str):
        return repr(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c >= " " else f"\\u{ord(c):04x}" for c in escaped) + '"'
