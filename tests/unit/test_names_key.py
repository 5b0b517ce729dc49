"""The rendezvous names (chjoin.names) and the ownership checks they rest on (chjoin.owned)."""

import os
import shutil
import tempfile

import pytest

from chjoin import names, owned

UID = os.geteuid()


@pytest.fixture
def home():
    with tempfile.TemporaryDirectory() as path:
        os.chmod(path, 0o755)
        yield path


def test_plain_names_keep_a_safe_tag_and_digest_any_other():
    assert names.plain_name(1001, "slurm.12.0") == "/chjoin-1001-slurm.12.0"
    odd = names.plain_name(1001, "a b/c")
    assert odd.startswith("/chjoin-1001-a_b_c~") and odd != names.plain_name(1001, "a b_c")


def test_keyed_names_depend_on_the_key_the_tag_and_the_attempt():
    key, other = b"k" * 32, b"o" * 32
    first = names.keyed_name(1001, "t", key)
    assert first.startswith("/chjoin-1001-") and len(first) == len("/chjoin-1001-") + 32
    assert "t" not in first[len("/chjoin-1001-"):].strip("0123456789abcdef")
    assert len({first, names.keyed_name(1001, "t", other), names.keyed_name(1001, "u", key),
                names.keyed_name(1001, "t", key, 1), names.keyed_name(1002, "t", key)}) == 5
    assert list(names.names(1001, "t", key)) == [names.keyed_name(1001, "t", key, i)
                                                 for i in range(names.TRIES)]
    assert list(names.names(1001, "t", None)) == ["/chjoin-1001-t"]


def test_a_key_is_made_once_private_and_read_back(home):
    key, path = names.load_key({"HOME": home}, UID)
    assert path == f"{home}/.local/state/chjoin/key" and len(key) == names.KEY_SIZE
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert names.load_key({"HOME": home}, UID) == (key, path)
    assert os.listdir(os.path.dirname(path)) == ["key"]        # no temporary file left


def test_ranks_that_start_at_once_agree_on_one_key(home):
    children = []
    for _ in range(16):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.write(w, names.load_key({"HOME": home}, UID)[0])
            os._exit(0)
        os.close(w)
        children.append((pid, r))
    keys = set()
    for pid, r in children:
        os.waitpid(pid, 0)
        keys.add(os.read(r, 64))
        os.close(r)
    assert len(keys) == 1 and len(keys.pop()) == names.KEY_SIZE


def test_the_runtime_directory_comes_first_when_private(home):
    """The first launch makes $HOME's key and copies it; the next reads the copy; a runtime
    directory that is not private is not used."""
    runtime = f"{home}/run"
    os.mkdir(runtime, 0o700)
    env = {"XDG_RUNTIME_DIR": runtime, "HOME": home}
    key, path = names.load_key(env, UID)
    assert path == f"{home}/.local/state/chjoin/key"
    assert names.load_key(env, UID) == (key, f"{runtime}/chjoin/home.key")
    os.chmod(runtime, 0o755)
    assert names.load_key(env, UID) == (key, f"{home}/.local/state/chjoin/key")


@pytest.mark.parametrize("first", ["with-runtime", "without-runtime"])
def test_steps_with_and_without_a_runtime_directory_share_one_key(home, first):
    """One step sees $XDG_RUNTIME_DIR, another doesn't (no logind session), a third a fresh one
    (logind removed the old at logout): whichever comes first, all three use one key."""
    runtime = f"{home}/run"
    os.mkdir(runtime, 0o700)
    with_runtime = {"XDG_RUNTIME_DIR": runtime, "HOME": home}
    order = [with_runtime, {"HOME": home}]
    keys = [names.load_key(env, UID)[0] for env in (order if first == "with-runtime"
                                                     else order[::-1])]
    shutil.rmtree(runtime)
    os.mkdir(runtime, 0o700)
    keys.append(names.load_key(with_runtime, UID)[0])
    assert len(set(keys)) == 1 and len(keys[0]) == names.KEY_SIZE
    for path in (f"{runtime}/chjoin/home.key", f"{home}/.local/state/chjoin/key"):
        with open(path, "rb") as f:
            assert f.read() == keys[0]
        assert sorted(os.listdir(os.path.dirname(path))) == [os.path.basename(path)]
    assert names.load_key(with_runtime, UID) == (keys[0], f"{runtime}/chjoin/home.key")


@pytest.mark.parametrize("how", ["an-earlier-chjoin", "home-unusable-then"])
def test_a_key_the_runtime_directory_held_alone_becomes_homes(home, how):
    """A key in $XDG_RUNTIME_DIR alone (made by an earlier chjoin, or while $HOME could not hold
    one): the first launch that sees both gives $HOME that key, so from then on the steps with
    and without $XDG_RUNTIME_DIR, and a named container made with the old key, all meet."""
    with tempfile.TemporaryDirectory() as runtime:
        os.chmod(runtime, 0o700)
        env = {"XDG_RUNTIME_DIR": runtime, "HOME": home}
        if how == "an-earlier-chjoin":
            os.mkdir(f"{runtime}/chjoin", 0o700)
            with open(f"{runtime}/chjoin/key", "wb") as f:
                f.write(b"e" * names.KEY_SIZE)
            os.chmod(f"{runtime}/chjoin/key", 0o600)
            old = b"e" * names.KEY_SIZE
        else:
            os.chmod(home, 0o777)                   # $HOME not trusted: the key is made alone
            old, path = names.load_key(env, UID)
            assert path == f"{runtime}/chjoin/key"
            os.chmod(home, 0o755)
        assert names.load_key(env, UID) == (old, f"{home}/.local/state/chjoin/key")
        assert names.load_key({"HOME": home}, UID)[0] == old
        assert names.load_key(env, UID) == (old, f"{runtime}/chjoin/home.key")


def test_a_spoiled_key_alone_in_the_runtime_directory_does_not_stop_homes(home):
    with tempfile.TemporaryDirectory() as runtime:
        os.chmod(runtime, 0o700)
        os.mkdir(f"{runtime}/chjoin", 0o700)
        with open(f"{runtime}/chjoin/key", "wb") as f:
            f.write(b"short")
        key, path = names.load_key({"XDG_RUNTIME_DIR": runtime, "HOME": home}, UID)
        assert path == f"{home}/.local/state/chjoin/key" and len(key) == names.KEY_SIZE


def test_a_runtime_directory_alone_still_gives_a_key(home):
    """No usable $HOME (read-only, say): the key is made in $XDG_RUNTIME_DIR alone."""
    with tempfile.TemporaryDirectory() as runtime:
        os.chmod(runtime, 0o700)
        os.chmod(home, 0o777)          # $HOME not trusted
        key, path = names.load_key({"XDG_RUNTIME_DIR": runtime, "HOME": home}, UID)
        assert path == f"{runtime}/chjoin/key" and len(key) == names.KEY_SIZE
        assert not os.path.exists(f"{home}/.local")


@pytest.mark.parametrize("spoil", ["symlink", "group-writable", "key-mode", "key-size",
                                   "key-symlink", "home-writable"])
def test_a_place_that_is_not_private_gives_no_key(home, spoil):
    state = f"{home}/.local/state"
    os.makedirs(state, 0o700)
    if spoil == "symlink":
        os.mkdir(f"{home}/elsewhere", 0o700)
        os.symlink(f"{home}/elsewhere", f"{state}/chjoin")
    elif spoil == "group-writable":
        os.mkdir(f"{state}/chjoin")
        os.chmod(f"{state}/chjoin", 0o770)
    elif spoil == "home-writable":
        os.chmod(home, 0o777)
    else:
        os.mkdir(f"{state}/chjoin", 0o700)
        if spoil == "key-symlink":
            os.symlink("/etc/hostname", f"{state}/chjoin/key")
        else:
            with open(f"{state}/chjoin/key", "wb") as f:
                f.write(b"x" * (names.KEY_SIZE if spoil == "key-mode" else 5))
            os.chmod(f"{state}/chjoin/key", 0o644 if spoil == "key-mode" else 0o600)
    key, why = names.load_key({"HOME": home}, UID)
    assert key is None and why, why


def test_no_home_no_key():
    assert names.load_key({}, UID) == (None, "neither $XDG_RUNTIME_DIR nor $HOME is set")
    assert names.load_key({"HOME": "relative"}, UID)[0] is None


def test_a_directory_is_trusted_only_when_nobody_else_controls_it(home):
    mine = f"{home}/mine"
    os.mkdir(mine, 0o755)
    assert owned.dir_problem(mine, UID) == ""
    os.chmod(mine, 0o1777)
    assert "writable by others (mode 1777)" in owned.dir_problem(mine, UID)
    assert owned.parents_problem(f"{mine}/x", UID) == ""    # sticky above: fine
    os.chmod(mine, 0o777)
    assert owned.parents_problem(f"{mine}/x", UID) == \
        f"{os.path.realpath(mine)} is writable by others (mode 777)"
    os.chmod(mine, 0o755)
    os.chown(mine, 4242, 4242)
    assert owned.dir_problem(mine, UID) == f"{mine} is owned by uid 4242"
    os.symlink(mine, f"{home}/link")
    assert owned.entry_problem(f"{home}/link", UID) == f"{home}/link is a symlink"


def test_a_home_key_that_cant_be_used_falls_back_to_the_runtime_directorys(home):
    """$HOME's key is there but spoiled (mode 0644: anybody could have read it): the runtime
    directory's key is used, not the plain names."""
    with tempfile.TemporaryDirectory() as runtime:
        os.chmod(runtime, 0o700)
        os.makedirs(f"{home}/.local/state/chjoin", 0o700)
        with open(f"{home}/.local/state/chjoin/key", "wb") as f:
            f.write(b"k" * names.KEY_SIZE)
        os.chmod(f"{home}/.local/state/chjoin/key", 0o644)
        key, path = names.load_key({"XDG_RUNTIME_DIR": runtime, "HOME": home}, UID)
        assert (path, len(key)) == (f"{runtime}/chjoin/key", names.KEY_SIZE)
        assert key != b"k" * names.KEY_SIZE


def test_ranks_with_and_without_home_that_start_at_once_agree(home):
    """16 ranks at once, half seeing $HOME and the runtime directory, half the runtime directory
    alone (no $HOME): all end with one key."""
    with tempfile.TemporaryDirectory() as runtime:
        os.chmod(runtime, 0o700)
        r, w = os.pipe()
        children = []
        for i in range(16):
            env = {"XDG_RUNTIME_DIR": runtime} if i % 2 else {"XDG_RUNTIME_DIR": runtime,
                                                              "HOME": home}
            pid = os.fork()
            if pid == 0:
                os.close(r)
                os.write(w, names.load_key(env, UID)[0])
                os._exit(0)
            children.append(pid)
        os.close(w)
        for pid in children:
            os.waitpid(pid, 0)
        data = b""
        while chunk := os.read(r, 4096):
            data += chunk
        os.close(r)
        keys = {data[i:i + names.KEY_SIZE] for i in range(0, len(data), names.KEY_SIZE)}
        assert len(data) == 16 * names.KEY_SIZE and len(keys) == 1
