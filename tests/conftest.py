"""Fixtures shared by the system tests: the chjoin command, test images, and the two identities.

System tests start real containers. They run as root and, through `subprocess`'s `user=`, as an
unprivileged test user (`$CHJOIN_TEST_USER`, default `chjoin-test`, made by `ci/test`). Images
are built here from Debian's busybox-static into world-readable temporary directories.
"""

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

BUSYBOX = "/bin/busybox"

# tests/mpi holds pytest-mpi tests: they run under mpirun or srun (tests/slurm/test_mpi.py
# starts them), never in the serial session.
collect_ignore = [] if "--with-mpi" in sys.argv else ["mpi"]
TEST_USER = os.environ.get("CHJOIN_TEST_USER", "chjoin-test")
ATTACKER_USER = os.environ.get("CHJOIN_ATTACKER_USER", "chjoin-attacker")  # tests/security


def chjoin_path():
    """The chjoin under test: $CHJOIN, else the one installed beside this interpreter."""
    return os.environ.get("CHJOIN") or str(Path(sys.executable).parent / "chjoin")


def wait_for(predicate, timeout=20, what="condition"):
    """`predicate()`'s first true value, polled every 0.1 s; the test fails past `timeout`."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def world_readable_dir(prefix):
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(path, 0o755)
    return Path(path)


def build_fake_library(base):
    """libfake.so.1 (soname libfake.so.1) and fakeprog, linked against it with no rpath, built
    in `base`: a library a CDI spec mounts and the image's ldconfig must find."""
    (base / "fake.c").write_text('const char *fake_hello(void) { return "hello from libfake"; }\n')
    (base / "prog.c").write_text('#include <stdio.h>\nconst char *fake_hello(void);\n'
                                 'int main(void) { puts(fake_hello()); return 0; }\n')
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libfake.so.1", "-o",
                    base / "libfake.so.1", base / "fake.c"], check=True)
    subprocess.run(["gcc", "-o", base / "fakeprog", base / "prog.c", f"-L{base}",
                    "-l:libfake.so.1"], check=True)


def build_busybox_image(root):
    """A minimal image: busybox and its applet links, the usual top-level directories."""
    for d in ("bin", "dev", "proc", "sys", "tmp", "etc", "home", "root", "mnt", "opt", "ch"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    for f in ("passwd", "group", "hosts", "resolv.conf"):
        (root / "etc" / f).write_text("")
    (root / "etc" / "image-file").write_text("from the image\n")
    (root / "ch" / "environment").write_text("FROM_IMAGE=yes\nIMAGE_PATH=/opt/bin:$PATH\n")
    (root / "tmp").chmod(0o1777)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return root


@pytest.fixture(scope="session")
def chjoin():
    path = chjoin_path()
    if not os.access(path, os.X_OK):
        pytest.fail(f"chjoin not found at {path}; install the package or set $CHJOIN")
    return path


@pytest.fixture(scope="session")
def image():
    """A read-only busybox image shared by the whole session."""
    if not os.path.exists(BUSYBOX):
        pytest.fail("busybox-static is not installed (ci/test installs it)")
    base = world_readable_dir("chjoin-img-")
    root = build_busybox_image(base / "img")
    yield root
    shutil.rmtree(base, ignore_errors=True)


def build_host_image(root):
    """An image of this host's system, for MPI programs: empty top-level directories and
    mount points that each run fills with the host's /usr, /opt (the venv and the MPICH shim),
    the dynamic linker's cache and alternatives, and Slurm's per-node directories."""
    for d in ("dev", "proc", "sys", "tmp", "etc/alternatives", "home", "root", "usr", "mnt",
              "opt", "run", "var/spool/slurmd", "var/lib/slurm"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for d in ("bin", "lib", "lib64", "sbin"):
        if os.path.exists(f"/usr/{d}"):
            (root / d).symlink_to(f"usr/{d}")
    for f in ("passwd", "group", "hosts", "resolv.conf", "ld.so.cache"):
        (root / "etc" / f).write_text("")
    (root / "tmp").chmod(0o1777)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return root


HOST_BINDS = ["-b", "/usr", "-b", "/opt", "-b", "/etc/ld.so.cache", "-b", "/etc/alternatives"]
if os.path.isdir("/var/lib/slurm"):
    HOST_BINDS += ["-b", "/var/lib/slurm"]      # srun --mpi=pmix's client dirs (ci/slurm-up)


@pytest.fixture(scope="session")
def host_image():
    """An image whose /usr and /opt are the host's (pass HOST_BINDS): real MPI programs run
    in it with the host's Python, mpi4py and MPI libraries."""
    base = world_readable_dir("chjoin-host-img-")
    yield build_host_image(base / "img")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def debian_image(as_user):
    """A Debian image of this host (build_host_image) that apt and dpkg can run in: the host's
    dpkg status and apt/dpkg configuration, owned by the identity (as ch-image leaves images),
    with /usr and /opt bound from the host at run time (HOST_BINDS); and a directory holding
    test.deb, package chjoin-seccomp-test: /srv/chjoin-test/hello owned by root and .../games
    by games (uid 5), which only --seccomp lets dpkg install (tests/system/test_seccomp.py,
    tests/slurm/test_named_steps.py)."""
    base = world_readable_dir("chjoin-debian-")
    root = build_host_image(base / "img")
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers",
              "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/log/apt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/var/lib/dpkg/status", root / "var/lib/dpkg/status")
    (root / "var/lib/dpkg/available").write_text("")
    shutil.copytree("/etc/apt", root / "etc/apt", dirs_exist_ok=True)
    shutil.copytree("/etc/dpkg", root / "etc/dpkg", dirs_exist_ok=True)
    # the package: a file owned by root and one by games (uid 5)
    pkg = base / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: chjoin-seccomp-test\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: chjoin tests <root@localhost>\nDescription: files of two owners\n")
    (pkg / "srv" / "chjoin-test").mkdir(parents=True)
    (pkg / "srv" / "chjoin-test" / "hello").write_text("hello\n")
    (pkg / "srv" / "chjoin-test" / "games").write_text("games\n")
    os.chown(pkg / "srv" / "chjoin-test" / "games", 5, 60)
    debs = base / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "-b", str(pkg), str(debs / "test.deb")], check=True,
                   capture_output=True)
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    as_user.own(root)
    yield root, debs
    shutil.rmtree(base, ignore_errors=True)


_shm_names = {}      # (uid, tag, environment): the names, which stay while the key does


class Runner:
    """Runs chjoin as one identity: "root", the unprivileged test "user", or the "attacker", a
    second unprivileged user (tests/security: a hostile neighbour of the test user)."""

    def __init__(self, chjoin, who):
        self.chjoin = chjoin
        self.who = who
        if who == "root":
            self.uid = self.gid = 0
            self.name, self.home = "root", "/root"
        else:
            entry = pwd.getpwnam(ATTACKER_USER if who == "attacker" else TEST_USER)
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
            self.name, self.home = entry.pw_name, entry.pw_dir

    def env(self, extra=None):
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.home, "USER": self.name,
               "LANG": "C.UTF-8"}
        env.update(extra or {})
        return {name: value for name, value in env.items() if value is not None}  # None: unset

    def run(self, *args, env=None, timeout=60, **kwargs):
        """chjoin ARGS as this identity, with `env` added to a small environment (a value of
        None unsets the variable); returns the CompletedProcess (text, captured)."""
        return subprocess.run([self.chjoin, *map(str, args)], capture_output=True, text=True,
                              env=self.env(env), timeout=timeout, cwd="/",
                              **self.identity_kwargs(), **kwargs)

    def identity_kwargs(self):
        if self.uid == os.geteuid():
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def group(self, args, ranks, env=None, timeout=60, linger=5, stagger=0, kill_delay=0.3,
              signals=(), stop_signal=9):
        """Start len(`ranks`) copies of `chjoin ARGS` at once as this identity, through
        tests/ranks.py (a launcher like srun); each entry of `ranks` is a dict with optional
        "env", "args" (added after ARGS), "close" (fds), "first" and "at" (a start delay);
        `signals` are sent as ranks.py describes. Returns a `Group`."""
        import json

        request = {"argv": [self.chjoin, *map(str, args)], "env": self.env(env),
                   "ranks": ranks, "timeout": timeout, "linger": linger, "stagger": stagger,
                   "kill_delay": kill_delay, "signals": list(signals),
                   "stop_signal": stop_signal}
        done = subprocess.run([sys.executable, "-c", RANKS.read_text()],
                              input=json.dumps(request),
                              capture_output=True, text=True, timeout=timeout + linger + 30,
                              cwd="/", **self.identity_kwargs())
        assert done.returncode == 0, done.stderr
        return Group(json.loads(done.stdout))

    def shm_names(self, tag, env=None):
        """The /dev/shm names (no leading `/`) a --join rank of this identity, with `env` as in
        `run`, tries for `tag`, in order: computed by chjoin's own code run as this identity,
        so with its key (keyed names) or without one (the plain name)."""
        code = ("import os, sys\nfrom chjoin import names\n"
                "key, _ = names.load_key(os.environ, os.geteuid())\n"
                "found = names.names(os.geteuid(), sys.argv[1], key)\n"
                "print(' '.join(found[i][1:] for i in range(len(found))))")
        cached = _shm_names.get((self.uid, tag, repr(sorted(self.env(env).items()))))
        if cached:
            return cached
        python = Path(self.chjoin).parent / "python"
        done = subprocess.run([str(python), "-I", "-c", code, tag], capture_output=True,
                              text=True, env=self.env(env), cwd="/", check=True,
                              **self.identity_kwargs())
        found = _shm_names[(self.uid, tag, repr(sorted(self.env(env).items())))] = \
            done.stdout.split()
        return found

    def shm_name(self, tag, env=None):
        """The /dev/shm name (no leading `/`) of `tag`'s record, as this identity's ranks make
        it (`shm_names`' first); its semaphore is `sem.` and this."""
        return self.shm_names(tag, env)[0]

    def own(self, path):
        """Give `path` (recursively) to this identity."""
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(path)], check=True)


@pytest.fixture
def victim(chjoin):
    """tests/security: the unprivileged test user, whom the attacker goes after."""
    return Runner(chjoin, "user")


@pytest.fixture
def attacker(chjoin):
    """tests/security: a second unprivileged user, the hostile neighbour."""
    return Runner(chjoin, "attacker")


@pytest.fixture(params=["root", "user"])
def as_user(request, chjoin):
    """Each system test runs twice: as root and as the unprivileged test user."""
    if os.geteuid() != 0:
        pytest.skip("system tests start as root and drop to the test user; run ci/test")
    if request.param == "user":
        try:
            pwd.getpwnam(TEST_USER)
        except KeyError:
            pytest.fail(f"test user {TEST_USER} missing (ci/test creates it)")
    return Runner(chjoin, request.param)


@pytest.fixture
def own_image(as_user):
    """A private copy of a busybox image owned by the identity under test (for -w)."""
    base = world_readable_dir("chjoin-own-")
    root = build_busybox_image(base / "img")
    as_user.own(root)
    yield root
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def host_dir(as_user):
    """A host directory with one file, readable by the identity under test."""
    base = world_readable_dir("chjoin-host-")
    (base / "file").write_text("from the host\n")
    os.chmod(base / "file", 0o644)
    yield base
    shutil.rmtree(base, ignore_errors=True)


BIG = 8 << 20        # the SquashFS image's /data/big: far more than read-ahead (128 KiB)


def mksquashfs(directory, path):
    subprocess.run(["mksquashfs", str(directory), str(path), "-noappend", "-quiet"],
                   check=True, capture_output=True)
    os.chmod(path, 0o644)
    return path


@pytest.fixture(scope="session")
def squash_dir():
    """A busybox SquashFS image (with an 8 MiB /data/big), a symlink to it, and bad files."""
    if not shutil.which("mksquashfs"):
        pytest.fail("mksquashfs is missing (ci/install installs squashfs-tools)")
    base = world_readable_dir("chjoin-sqfs-")
    tree = build_busybox_image(base / "tree")
    (tree / "data").mkdir()
    (tree / "data" / "big").write_bytes(os.urandom(BIG))
    os.chmod(tree / "data", 0o755)
    os.chmod(tree / "data" / "big", 0o644)
    image = mksquashfs(tree, base / "img.sqfs")
    (base / "link.sqfs").symlink_to(image)
    data = image.read_bytes()
    bad = {"garbage": b"hsqs" + os.urandom(1 << 16), "truncated": data[:len(data) // 2]}
    superblock = bytearray(data)
    superblock[48:56] = (len(data) + 4096).to_bytes(8, "little")  # id table: past the end
    bad["corrupt"] = bytes(superblock)
    root = bytearray(data)
    root[64:72] = (len(data) - 4096).to_bytes(8, "little")   # inode table: not one
    bad["no-root"] = bytes(root)
    for name, content in bad.items():
        (base / f"{name}.sqfs").write_bytes(content)
        os.chmod(base / f"{name}.sqfs", 0o644)
    yield base
    shutil.rmtree(base, ignore_errors=True)


RANKS = Path(__file__).parent / "ranks.py"


class Group:
    """What `Runner.group` returns: one result per rank, and what outlived the ranks."""

    def __init__(self, result):
        self.ranks = [subprocess.CompletedProcess([], r["returncode"], r["stdout"], r["stderr"])
                      for r in result["ranks"]]
        for rank, r in zip(self.ranks, result["ranks"]):
            rank.pid, rank.elapsed = r["pid"], r["elapsed"]
        self.lingering = result["lingering"]
        self.holders_signalled = result["holders_signalled"]
        self.killed_holders = result["killed_holders"]
        self.killed = result["killed"]
        self.terminated = result.get("terminated", [])
        self.reaped_after = result["reaped_after"]

    @property
    def returncodes(self):
        return [r.returncode for r in self.ranks]


def winner_of(rank):
    """The pid of the winner of the group a --join rank ran in, from its -v lines (its own pid
    when it won, or was a group of one); None if it says neither."""
    import re

    won = re.search(r"chjoin\[(\d+)\]: join: (won|a group of one)", rank.stderr)
    joined = re.search(r"joined the container of winner pid (\d+)", rank.stderr)
    return int((won or joined).group(1)) if won or joined else None


@pytest.fixture
def slurm_config():
    """make(**settings) -> the path of a settings file for the prolog and epilog, as a site
    writes /etc/chjoin/slurm.conf: root's, in a directory of root's that nobody else can write
    (the prolog and epilog ignore any other). Removed after the test."""
    made = []

    def make(**settings):
        directory = Path(tempfile.mkdtemp(prefix="chjoin-conf-", dir="/run"))
        os.chmod(directory, 0o755)
        made.append(directory)
        path = directory / "slurm.conf"
        path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        os.chmod(path, 0o644)
        return str(path)

    yield make
    for directory in made:
        shutil.rmtree(directory, ignore_errors=True)
