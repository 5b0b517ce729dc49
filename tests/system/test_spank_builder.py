"""The SPANK plugin's builder alone, run as the plugin runs it (`python -I -S chjoin-spank-build
IMAGE ARGS`, a socket on fd 3), as root and as the test user: it sends the operations from
inside the container, waits for the plugin to take it, and leaves nothing; a bad input is one
error line and chjoin's exit code; its start-up imports nothing heavy, not even `site`."""

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

from test_startup import HEAVY, imported


def run_builder(as_user, image, args, env=None, take=None, name=None):
    """Run the builder (with --chjoin-name `name`, if given); `take(pid)` is called once the
    operations are in, while it waits. Returns (exit code, stderr, operations as [[fields]])."""
    chjoin = Path(as_user.chjoin)
    argv = [str(chjoin.parent / "python"), "-X", "importtime", "-I", "-S",
            str(chjoin.parent / "chjoin-spank-build"), str(image), args,
            *([name] if name is not None else [])]
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=as_user.env(env), cwd="/",
                               close_fds=False, **as_user.identity_kwargs(),
                               preexec_fn=lambda: os.dup2(theirs.fileno(), 3))
    theirs.close()
    data = b""
    while True:
        chunk = ours.recv(65536)
        data += chunk
        head, _, body = data.partition(b"\n")
        if not chunk or (head and len(body) >= int(head)):
            break
    if data and take:
        take(process.pid)
    ours.close()
    _out, err = process.communicate(timeout=30)
    records, fields = [], body.split(b"\0")[:-1] if data else []
    widths = {b"S": 3, b"X": 3, b"U": 2, b"P": 1, b"D": 2, b"Q": 2, b"R": 1}
    while fields:
        n = widths[fields[0]]
        records.append([f.decode() for f in fields[:n]])
        fields = fields[n:]
    return process.returncode, err.decode(), records


def test_the_builder_hands_over_the_rules_from_inside_the_container(as_user, image):
    seen = {}

    def take(pid):
        seen["user"] = os.readlink(f"/proc/{pid}/ns/user")
        seen["root"] = sorted(os.listdir(f"/proc/{pid}/root"))

    code, err, records = run_builder(as_user, image, "-c /tmp --set-env=A=$B "
                                     "--unset-env='X*' --set-env", take=take)
    assert code == 0, err
    assert seen["user"] != os.readlink("/proc/self/ns/user")
    assert "ch" in seen["root"] and "busybox" not in seen["root"]     # the image's root
    assert records == [["S", "HOME", "/root"], ["P"], ["U", "TMPDIR"], ["X", "A", "$B"],
                       ["U", "X*"], ["X", "FROM_IMAGE", "yes"],
                       ["X", "IMAGE_PATH", "/opt/bin:$PATH"],
                       ["S", "CH_RUNNING", "Weird Al Yankovic"], ["S", "PWD", "/tmp"],
                       ["D", "/tmp"], ["Q", "0"], ["R"]]
    modules = imported(err)
    assert "chjoin.builder" in modules
    assert modules & (HEAVY | {"site"}) == set()


def test_a_bad_input_is_one_error_line_and_chjoins_exit_code(as_user, image):
    for image_ref, args, code in [("/nonexistent", "", 31), (image, "--join", 64),
                                  (image, "-b 'x", 64), (image, "-b /nonexistent", 31)]:
        status, err, records = run_builder(as_user, image_ref, args)
        lines = [line for line in err.splitlines() if not line.startswith("import time:")]
        assert status == code and records == [], err
        assert len([l for l in lines if re.match(r"chjoin\[\d+\]: error: ", l)]) == 1, err
        assert "Traceback" not in err


def test_a_nul_in_the_images_environment_fails_the_build_with_one_line(as_user):
    """A NUL inside a /ch/environment value would shift the plugin's records (the tasks would
    get operations nobody asked for): the builder refuses it, naming the file and line."""
    from conftest import build_busybox_image, world_readable_dir

    base = world_readable_dir("chjoin-nul-env-")
    root = build_busybox_image(base / "img")
    (root / "ch" / "environment").write_bytes(b"GOOD=1\nA=x\0S\0EVIL\0yes\n")
    try:
        status, err, records = run_builder(as_user, root, "--set-env")
    finally:
        shutil.rmtree(base)
    lines = [l for l in err.splitlines() if re.match(r"chjoin\[\d+\]: error: ", l)]
    assert status == 31 and records == [], err
    assert len(lines) == 1 and "NUL byte: /ch/environment:2" in lines[0], err


def test_seccomp_is_refused_with_one_line(as_user, image):
    """The plugin's tasks are entered by C and exec'd by slurmstepd: no per-process filter
    can be installed there, so --seccomp is refused before anything is built."""
    status, err, records = run_builder(as_user, image, "-W --seccomp")
    lines = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert status == 64 and records == []
    assert [re.sub(r"^chjoin\[\d+\]: ", "", line) for line in lines] == [
        "error: --chjoin-args: --seccomp: not under the SPANK plugin: its tasks are entered "
        "and exec'd by slurmstepd, where no per-process filter is installed (use srun chjoin "
        "--join --seccomp)"]
