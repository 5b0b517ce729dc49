"""chjoin.owned.resolve: a path resolved one component at a time, following a symlink only if
the user or root made it, and checking every directory on the way. Run as root (the owners are
made-up uids; resolve looks at metadata only), else skipped."""

import os
import random
import tempfile

import pytest

from chjoin import owned

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown to other uids")

USER, OTHER = 4242, 4343


@pytest.fixture
def base():
    with tempfile.TemporaryDirectory() as path:
        os.chmod(path, 0o755)
        os.chown(path, USER, USER)
        yield os.path.realpath(path)


def link(target, path, uid):
    os.symlink(target, path)
    os.lchown(path, uid, uid)


def test_a_symlink_of_another_user_is_named_not_followed(base):
    os.mkdir(f"{base}/sticky", 0o755)
    os.chmod(f"{base}/sticky", 0o1777)
    os.mkdir(f"{base}/mine", 0o755)
    link(f"{base}/mine", f"{base}/sticky/theirs", OTHER)
    assert owned.resolve(f"{base}/sticky/theirs/x", USER, missing_ok=True) == (
        f"{base}/sticky", f"{base}/sticky/theirs is a symlink owned by uid 4343")
    assert owned.parents_problem(f"{base}/sticky/theirs/x", USER) == \
        f"{base}/sticky/theirs is a symlink owned by uid 4343"
    assert owned.dir_problem(f"{base}/sticky/theirs", USER) == \
        f"{base}/sticky/theirs is a symlink owned by uid 4343"


@pytest.mark.parametrize("owner", [USER, 0])
def test_the_users_and_roots_symlinks_are_followed_as_the_kernel_does(base, owner):
    os.makedirs(f"{base}/a/b/c")
    link("b/c", f"{base}/a/rel", owner)
    link(f"{base}/a/b", f"{base}/abs", owner)
    for path in ("a/rel/..", "abs/c", "a/rel/../../../abs/./c/", "abs/../rel"):
        real, problem = owned.resolve(f"{base}/{path}", USER)
        assert (real, problem) == (os.path.realpath(f"{base}/{path}"), ""), path
    assert owned.dir_problem(f"{base}/a/rel", USER) == ""


def test_a_relative_path_starts_at_the_working_directory(base, monkeypatch):
    os.mkdir(f"{base}/d")
    monkeypatch.chdir(base)
    assert owned.resolve("d", USER) == (f"{base}/d", "")


def test_loops_missing_parts_and_files_on_the_way(base):
    link("loop", f"{base}/loop", USER)
    assert owned.resolve(f"{base}/loop", USER)[1] == \
        f"{base}/loop: Too many levels of symbolic links"
    assert owned.resolve(f"{base}/no/such", USER) == (
        base, f"{base}/no: No such file or directory")
    assert owned.resolve(f"{base}/no/such/x", USER, missing_ok=True) == (f"{base}/no/such/x", "")
    assert owned.resolve(f"{base}/no/such/../x", USER, missing_ok=True) == (
        base, f"{base}/no: No such file or directory")     # the kernel can't go up through it
    open(f"{base}/file", "w").close()
    assert owned.resolve(f"{base}/file/x", USER)[1] == f"{base}/file is not a directory"


@pytest.mark.parametrize("mode, owner, problem", [
    (0o777, USER, "is writable by others (mode 777)"),
    (0o775, USER, "is writable by others (mode 775)"),
    (0o1777, USER, ""),
    (0o755, OTHER, "is owned by uid 4343"),
    (0o755, 0, "")])
def test_every_directory_on_the_way_is_checked(base, mode, owner, problem):
    os.makedirs(f"{base}/d/e")
    os.chown(f"{base}/d", owner, owner)
    os.chmod(f"{base}/d", mode)
    expected = f"{base}/d {problem}" if problem else ""
    assert owned.resolve(f"{base}/d/e", USER)[1] == expected
    assert owned.resolve(f"{base}/d", USER)[1] == ""      # the last part is the caller's


@pytest.mark.parametrize("seed", range(40))
def test_random_trees_resolve_like_the_kernel_and_no_foreign_symlink_decides(base, seed):
    """A random tree of directories and symlinks (relative, absolute, with `..`, some dangling,
    owned by the user, root or another user), and random paths through it. Where resolve finds
    no problem, its result is the kernel's (realpath) and every symlink it went through is the
    user's or root's: giving another user's symlink to the user, or making it lead elsewhere,
    changes nothing, unless resolve named that symlink."""
    rng = random.Random(seed)
    dirs, links = [base], []
    for i in range(rng.randint(3, 8)):
        path = f"{rng.choice(dirs)}/d{i}"
        os.mkdir(path, 0o755)
        os.chown(path, USER, USER)
        dirs.append(path)
    names = [os.path.basename(d) for d in dirs[1:]] + ["..", ".", "nowhere"]
    for i in range(rng.randint(2, 8)):
        target = "/".join(rng.choice(names) for _ in range(rng.randint(1, 3)))
        if rng.random() < 0.4:
            target = f"{rng.choice(dirs)}/{target}"
        path = f"{rng.choice(dirs)}/l{i}"
        link(target, path, rng.choice([USER, USER, 0, OTHER]))
        links.append(path)
    steps = names + [os.path.basename(p) for p in links]
    for _ in range(30):
        path = rng.choice(dirs) + "/" + "/".join(rng.choice(steps)
                                                  for _ in range(rng.randint(1, 4)))
        real, problem = owned.resolve(path, USER)
        if not problem:
            assert real == os.path.realpath(path) and os.path.exists(path), path
        for theirs in [p for p in links if os.lstat(p).st_uid == OTHER]:
            if problem.startswith(f"{theirs} is a symlink owned by"):
                continue
            target = os.readlink(theirs)
            for change in ("given to the user", "led elsewhere"):
                if change == "given to the user":
                    os.lchown(theirs, USER, USER)
                else:
                    os.unlink(theirs)
                    link(f"{base}/d0", theirs, OTHER)
                try:
                    again = owned.resolve(path, USER)
                finally:
                    os.unlink(theirs)
                    link(target, theirs, OTHER)
                assert again == (real, problem), (path, theirs, change)
