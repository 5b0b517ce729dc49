"""The SPANK plugin against a hostile builder, under the real slurmd (issue 18, attack 5).

The builder runs as the job's user with the job's environment, so the user controls it: here an
LD_PRELOAD shim (hostile_builder.c) makes the real builder send, before Python even starts, an
overlong or signed length, records with a missing NUL or the wrong number of fields, records
after "ready" or none at all, a channel of 4 MiB of garbage, or 64 MiB of output. slurmstepd
(real and saved uid 0) must come out unharmed: every task fails with chjoin's exit code and
one line from the plugin, srun exits non-zero, nothing is left, and the next step runs. Before
issue 18, an overlong length made slurmstepd write before its heap buffer (`malloc(): smallbin
double linked list corrupted`, the step aborted, srun exiting 0)."""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "slurm"))
from cluster import cluster, submit  # noqa: E402,F401
from test_spank import (SHOW, assert_nothing_left, containers, errors,  # noqa: E402,F401
                        plugstack_timeout, sanitizer_reports, spank)
from silent_fuse import silent_mount  # noqa: E402

SLURMD_LOG = Path("/var/log/slurm/slurmd.log")
HARMED = re.compile(r"corrupted|double free|Segmentation|core dumped|Aborted|SIGSEGV|SIGABRT|"
                    r"AddressSanitizer|runtime error|malloc\(\)")

# case: what the plugin's one line says
CASES = {
    "overlong-length": "a length over 4194304 bytes",
    "over-maximum": "a length over 4194304 bytes",
    "signed-length": "a length that is not decimal digits",
    "no-length": "no length in its first 8 bytes",
    "missing-nul": "a S record with fewer than 2 fields",
    "too-few-fields": "a S record with fewer than 2 fields",
    "extra-field": "an unknown record at byte 2",
    "after-ready": "records after the R record",
    "no-ready": "no R record at the end",
    "trailing": "6 bytes after the operations",
    # where the plugin's reads fall decides which it sees first
    "huge-channel": r"(a record not NUL-terminated at byte 0|\d+ bytes after the operations)",
}


@pytest.fixture(scope="session")
def shim():
    """hostile_builder.so, readable by every user."""
    base = Path(tempfile.mkdtemp(prefix="chjoin-hostile-", dir="/tmp"))
    base.chmod(0o755)
    so = base / "hostile_builder.so"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(so),
                    str(Path(__file__).with_name("hostile_builder.c"))], check=True)
    so.chmod(0o755)
    yield so
    shutil.rmtree(base)


def slurmd_log_from(offset):
    try:
        with open(SLURMD_LOG, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def log_size():
    return SLURMD_LOG.stat().st_size if SLURMD_LOG.exists() else 0


def hostile_srun(as_user, image, shim, case):
    return submit(as_user, ["srun", "-N1", "-n3", f"--chjoin-image={image}", *SHOW],
                  env={"LD_PRELOAD": str(shim), "CHJOIN_HOSTILE": case}, timeout=120)


def assert_one_line_and_unharmed(done, message, since):
    assert done.returncode == 31, done.stderr[-2000:]
    assert done.stdout == "", "a task ran"
    lines = errors(done.stderr)
    assert len(lines) == 1 and re.search(message, lines[0]), done.stderr[-2000:]
    others = [l for l in done.stderr.splitlines() if l not in lines and not l.startswith("srun: ")]
    assert others == [], others[:5]
    assert re.search(r"srun: error: \S+: tasks 0-2: Exited with exit code 31", done.stderr), \
        done.stderr[-2000:]
    assert not HARMED.search(done.stderr)
    harmed = [l for l in slurmd_log_from(since).splitlines() if HARMED.search(l)]
    assert harmed == [], harmed
    assert sanitizer_reports() == []          # the ASan cluster's (CHJOIN_SLURM_ASAN=1)


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_channel_fails_every_task_with_one_line(cluster, spank, as_user, image,
                                                             shim, case):
    since = log_size()
    done = hostile_srun(as_user, image, shim, case)
    assert_one_line_and_unharmed(done, f"the builder sent a malformed channel: {CASES[case]}",
                                 since)
    assert_nothing_left(cluster, as_user)


def test_a_flood_of_output_is_not_shown_and_the_exit_code_kept(cluster, spank, as_user, image,
                                                               shim):
    """64 MiB on stdout and stderr, no line in chjoin's form, exit 31: slurmstepd keeps 64 KiB
    of it, shows none, and says how the builder ended."""
    since = log_size()
    done = hostile_srun(as_user, image, shim, "huge-output")
    assert_one_line_and_unharmed(done, "the builder exited with code 31 without an error line",
                                 since)
    assert len(done.stderr) < 4096
    assert_nothing_left(cluster, as_user)


def test_a_builder_stuck_in_the_kernel_holds_slurmstepd_only_until_its_deadline(
        cluster, spank, as_user, image, shim):
    """The builder stats a file on a file system that never answers (the user's own FUSE
    mount, a hung NFS server): SIGKILL at the plugstack's timeout does not end it. slurmstepd
    waits 5 s more, not forever: every task fails with one line, and the step ends."""
    from conftest import world_readable_dir

    mnt = world_readable_dir("chjoin-silent-")
    since = log_size()
    try:
        with plugstack_timeout(3), silent_mount(mnt):
            done = submit(as_user, ["srun", "-N1", "-n3", f"--chjoin-image={image}", *SHOW],
                          env={"LD_PRELOAD": str(shim), "CHJOIN_HOSTILE": "stuck-in-kernel",
                               "CHJOIN_HOSTILE_PATH": f"{mnt}/x"}, timeout=60)
    finally:
        shutil.rmtree(mnt, ignore_errors=True)
    assert_one_line_and_unharmed(done, r"building the container took longer than timeout=3 s "
                                 r"\(plugstack.conf\); the builder did not end 5 s after "
                                 r"SIGKILL \(stuck in the kernel", since)
    assert_nothing_left(cluster, as_user)


def test_the_next_step_runs_after_hostile_builders(cluster, spank, as_user, image, shim):
    """The same node, straight after: slurmd and the plugin still build and run containers."""
    for case in ("overlong-length", "huge-channel"):
        hostile_srun(as_user, image, shim, case)
    done = submit(as_user, ["srun", "-N1", "-n3", f"--chjoin-image={image}", *SHOW])
    assert done.returncode == 0, done.stderr
    [(_host, found)] = containers(done.stdout).items()
    assert list(found.values()) == [3]


def test_a_nul_in_the_images_environment_adds_no_operation(cluster, spank, as_user):
    """An image's /ch/environment value holding NULs (`A=x\\0S\\0EVIL\\0yes`) used to shift the
    records: each task got EVIL=yes, which nobody set. Now the build fails: one line per node
    naming the file and line, exit 31, no task runs."""
    from conftest import build_busybox_image, world_readable_dir

    base = world_readable_dir("chjoin-nul-env-")
    try:
        root = build_busybox_image(base / "img")
        (root / "ch" / "environment").write_bytes(b"GOOD=1\nA=x\0S\0EVIL\0yes\n")
        done = submit(as_user, ["srun", "-n2", f"--chjoin-image={root}",
                                "--chjoin-args=--set-env", "sh", "-c", 'echo "EVIL=$EVIL"'])
    finally:
        shutil.rmtree(base)
    assert done.returncode == 31, done.stderr
    assert "EVIL=yes" not in done.stdout and done.stdout == ""
    lines = errors(done.stderr)
    assert len(lines) == 1 and "NUL byte: /ch/environment:2" in lines[0], done.stderr
