"""Messages in ch-run's form, `chjoin[PID]: level: message`, and the exit codes that go with them.

Verbosity is a plain integer carried by the caller: -1..-3 for -q, 0 by default, 1..3 for -v.
Fatal errors are exceptions (`Fatal`), printed once by the command line and turned into an exit
code there, so that no module below `cli` ever calls `sys.exit`.
"""

import os
import sys

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


def emit(level, message):
    """Write one message line on stderr; never raises, even with stderr closed."""
    try:
        os.write(2, f"chjoin[{os.getpid()}]: {level}: {message}\n".encode(errors="replace"))
    except OSError:
        pass


class Log:
    """Leveled messages for one launch: `warning` shows unless -q, `info` from -v, `debug` from -vv."""

    def __init__(self, verbosity=0):
        self.verbosity = verbosity

    def warning(self, message):
        if self.verbosity >= 0:
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
