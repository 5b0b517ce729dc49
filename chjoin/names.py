"""The rendezvous names of a tag: ones that no other user can compute, so nobody can take them
first and deny a join.

`/chjoin-<uid>-<hex>`, where hex is a keyed BLAKE2b digest of the tag with a key of 32 random
bytes that only the user can read: the file `key` (0600) in `$HOME/.local/state/chjoin` (the
place every step of a job sees, on every node), and a copy of it, `home.key`, in
`$XDG_RUNTIME_DIR/chjoin` when $XDG_RUNTIME_DIR is a directory of the user's own and private
(0700), as logind makes it: local memory, which ranks read first. Steps agree whether they see
$XDG_RUNTIME_DIR or not. Without a usable $HOME the key is `key` in $XDG_RUNTIME_DIR alone
(and seeds $HOME's once $HOME can hold one). Each directory is checked before the key is
trusted (`owned`: the user's or root's all the way down, not writable by others, symlinks only
of theirs) and made 0700 where missing. A key is written to a temporary file and `link(2)`ed
into place, so ranks that start at once agree on one key; every rank then reads the key that
is there.
Where no such place exists (no $HOME of the user's own, a read-only one), the names are today's
plain ones, `/chjoin-<uid>-<tag>`, which anybody can compute: -v says so.

A name can still be seen in /dev/shm once made, and taken (after the group that made it ends)
for the next use of the same tag. So a tag has `TRIES` names, one per attempt number in the
digest; every rank walks them in order and uses the first whose record no other user holds
(`ipc`). Only a user who keeps squatting every name they saw, through `TRIES` uses of one tag,
runs a tag out of names (then its ranks fail with one line); Slurm's tags are never reused.
Root-run tools never need the key: they find records by the uid prefix and read the tag from the
record itself. Runs on every rank: `os`, `stat` and `_blake2` only.
"""

import os

from chjoin import owned

KEY_SIZE = 32
DIGEST_SIZE = 16        # 32 hex digits: the name stays far below NAME_MAX
TRIES = 32              # names per tag, tried in order while others hold the first ones


class NoKey(Exception):
    """A place for the key that can't be trusted or used; the message says why."""


def plain_name(uid, tag):
    """`/chjoin-<uid>-<tag>`, with the tag kept to characters every POSIX IPC name allows;
    a tag that had to change, or is long, gets a digest so that different tags never meet."""
    safe = "".join(c if c.isalnum() or c in "._-@+" else "_" for c in tag)
    if safe != tag or len(safe) > 64:
        from _blake2 import blake2b
        digest = blake2b(tag.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
        safe = f"{safe[:40]}~{digest}"
    return f"/chjoin-{uid}-{safe}"


def keyed_name(uid, tag, key, attempt=0):
    """`/chjoin-<uid>-<hex>`: the tag's name number `attempt` under `key`."""
    from _blake2 import blake2b

    text = f"{attempt}\0{tag}".encode("utf-8", "surrogateescape")
    return f"/chjoin-{uid}-{blake2b(text, digest_size=DIGEST_SIZE, key=key).hexdigest()}"


class Names:
    """The names a rank of `tag` tries, in order: `TRIES` keyed ones, or (no key) the plain
    one; a sequence that computes each only when asked (a rank nearly always needs one)."""

    def __init__(self, uid, tag, key):
        self.uid, self.tag, self.key = uid, tag, key
        self._made = {}

    def __len__(self):
        return 1 if self.key is None else TRIES

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i not in self._made:
            self._made[i] = (plain_name(self.uid, self.tag) if self.key is None
                             else keyed_name(self.uid, self.tag, self.key, i))
        return self._made[i]


def names(uid, tag, key):
    """`Names(uid, tag, key)`: the names a rank of `tag` tries, in order."""
    return Names(uid, tag, key)


def places(environ):
    """[(base, [directories to make under it, in order])] where the key may be kept."""
    found = []
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        found.append((runtime, ["chjoin"]))
    home = environ.get("HOME", "")
    if home.startswith("/"):
        found.append((home, [".local", ".local/state", ".local/state/chjoin"]))
    return found


def _private_dir(base, parts, uid, runtime):
    """The key's directory under `base`, made where missing, once every directory on the way is
    checked; `NoKey` if one can't be trusted or made."""
    problem = owned.dir_problem(base, uid, root_ok=False)
    if not problem and runtime:
        try:
            mode = os.stat(base).st_mode & 0o777
        except OSError as e:      # logind removed it meanwhile
            raise NoKey(f"{base}: {e.strerror}") from None
        if mode & 0o077:
            problem = f"{base} is mode {mode:o}, not private"
    if problem:
        raise NoKey(problem)
    for part in parts:
        path = f"{base}/{part}"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            except OSError as e:
                raise NoKey(f"can't make {path}: {e.strerror}") from None
            st = None
        except OSError as e:
            raise NoKey(f"{path}: {e.strerror}") from None
        problem = owned.entry_problem(path, uid, st, root_ok=False, sticky_ok=False)
        if problem:
            raise NoKey(problem)
    return f"{base}/{parts[-1]}"


def _read_key(path, uid):
    """The key in file `path`, or None if there is none; `NoKey` if it isn't one we wrote."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise NoKey(f"can't open {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077 \
                or st.st_size != KEY_SIZE:
            raise NoKey(f"{path} is not a key of this user's (owner uid {st.st_uid}, mode "
                        f"{stat.S_IMODE(st.st_mode):o}, {st.st_size} bytes)")
        key = os.pread(fd, KEY_SIZE + 1, 0)
    except OSError as e:
        raise NoKey(f"can't read {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(key) != KEY_SIZE:
        raise NoKey(f"{path}: short read")
    return key


def _make_key(path, key=None):
    """Write `key` (a new random one if None) to `path` unless a key is there already (whoever
    links first wins)."""
    temporary = f"{path}.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise NoKey(f"can't write {temporary}: {e.strerror}") from None
    try:
        try:
            os.write(fd, key or os.urandom(KEY_SIZE))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temporary, path)
    except FileExistsError:
        pass
    except OSError as e:
        raise NoKey(f"can't write {path}: {e.strerror}") from None
    finally:
        try:
            os.unlink(temporary)
        except OSError:
            pass


COPY = "home.key"       # in $XDG_RUNTIME_DIR/chjoin: a copy of $HOME's key, read first


def _alone_key(path, uid):
    """The key at `path` in the runtime directory, made there where missing; None if `path`
    is None or holds no usable key (then $HOME's is made new)."""
    if path is None:
        return None
    try:
        key = _read_key(path, uid)
        if key is None:
            _make_key(path)
            key = _read_key(path, uid)
        return key
    except NoKey:
        return None


def load_key(environ, uid):
    """(key, path of its file), or (None, why there is none). Ranks read the copy of $HOME's
    key in $XDG_RUNTIME_DIR (COPY: local memory) when there is one; else $HOME's key (made
    where missing, from a key $XDG_RUNTIME_DIR held alone if any: one an earlier chjoin or a
    launch without a usable $HOME made there), copied into $XDG_RUNTIME_DIR; with no usable
    $HOME, a key of $XDG_RUNTIME_DIR's alone. So steps that see $XDG_RUNTIME_DIR and steps
    that don't, or a fresh one after logind removed the old, compute the same names."""
    reasons, dirs = [], {}
    for base, parts in places(environ):
        runtime = parts == ["chjoin"]
        try:
            dirs["runtime" if runtime else "home"] = _private_dir(base, parts, uid, runtime)
        except NoKey as e:
            reasons.append(str(e))
            continue
        if runtime:
            try:
                key = _read_key(f"{dirs['runtime']}/{COPY}", uid)
            except NoKey as e:
                reasons.append(str(e))
                key = None
            if key is not None:
                return key, f"{dirs['runtime']}/{COPY}"
    alone = f"{dirs['runtime']}/key" if "runtime" in dirs else None
    if "home" in dirs:
        path = f"{dirs['home']}/key"
        try:
            key = _read_key(path, uid)
            if key is None:
                # seeded from the runtime directory's key, made first where missing (the first
                # link wins): every rank that sees the runtime directory agrees on one key
                _make_key(path, _alone_key(alone, uid))
                key = _read_key(path, uid)
        except NoKey as e:
            reasons.append(str(e))
            key = None
        if key is not None:
            if alone:
                try:
                    _make_key(f"{dirs['runtime']}/{COPY}", key)
                except NoKey:
                    pass          # no copy: ranks read $HOME's key
            return key, path
    if alone:                     # no usable $HOME: the runtime directory's key alone
        try:
            key = _alone_key(alone, uid)
        except NoKey as e:
            reasons.append(str(e))
            key = None
        if key is not None:
            return key, alone
    return None, "; ".join(reasons) or "neither $XDG_RUNTIME_DIR nor $HOME is set"
