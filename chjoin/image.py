"""Image kinds: which image a reference names, found the way ch-run finds it, and the SquashFS
daemon that turns a SquashFS file into a directory.

A name in the storage directory (`$storage/img/NAME`, `/` spelled `%` and `:` spelled `+`) wins;
else a directory; else a file with the SquashFS magic; else the reference is no image. A
directory that is the host's own root (`/`) is an image too, as in ch-run 0.45: the launch then
runs on the host's tree (`fs.plan` knows what that means).

A SquashFS image is served by one `squashfuse_ll` per container, started by the rank that builds
it (`SquashDaemon`; peers enter the container and never mount). Where the daemon lives decides
when it ends (shared/SQUASHFS.md): *outside* the container's namespaces, in its own session,
holding only the `/dev/fuse` descriptor that the builder opened and mounted inside them. The
kernel then ends it when the container's last process exits, and never before, whatever the
winner, the holder or any rank does: no rank ever sees SIGBUS or ENOTCONN, and nothing outlives
the container. So:

1. Before `unshare`, still single-threaded: find `squashfuse_ll`, make the mount point, open and
   check the image, and double-fork the helper (`setsid`, SIGINT/HUP/TERM ignored, every fd
   closed but a socket, the image and a pipe for its stderr). It waits for one descriptor.
2. In the new namespaces: open `/dev/fuse` (opened before the `unshare`, mount(2) refuses it),
   mount it at the mount point, send it to the helper and close our copy (a daemon that dies
   then makes accesses fail at once with ENOTCONN, rather than hang), which execs
   `squashfuse_ll -f /dev/fd/IMAGE /dev/fd/FUSE`.
3. `stat` the mount point: it returns once the daemon has answered FUSE's INIT. ENOTCONN means it
   failed; its stderr, read from the pipe, says why.

This module runs on the rank path: it forks and execs by itself (`subprocess` costs every rank
milliseconds of imports) and speaks to the helper with `_socket` (`socket` costs 6 ms more).
"""

import os
import stat
import struct

from chjoin.log import EXIT_SQUASH, Fatal
from chjoin.value import Value

SQUASHFS_MAGIC = b"hsqs"
SQUASHFUSE = "squashfuse_ll"       # Debian's squashfuse; the one that is fast on metadata
FUSE_DEVICE = "/dev/fuse"
# The superblock's first 48 bytes: magic, inodes, mkfs time, block size, fragments, compressor,
# block log, flags, ids, version major, minor, root inode, bytes used.
_SUPERBLOCK = struct.Struct("<4sIIIIHHHHHHQQ")


class Image(Value):
    path: str        # absolute host path: the image's root directory, or its SquashFS file
    by_name: bool    # found in the storage directory
    squashfs: bool = False


def default_storage(environ, user_name):
    """`$CH_IMAGE_STORAGE`, else /var/tmp/$USER.ch, as ch-image and ch-run agree (`user_name`:
    $USER, or the host's name for us when it is unset)."""
    return environ.get("CH_IMAGE_STORAGE") or f"/var/tmp/{user_name}.ch"


def storage_name(ref):
    """The directory name under `$storage/img/` of image reference `ref`."""
    return ref.replace("/", "%").replace(":", "+")


def storage_problem(storage, name, uid):
    """(path, problem): the directory of image `name` in `storage`, and why another user than
    `uid` (or root) could have made or changed it ("" if nobody could): the storage directory,
    its `img/` and the entry must be theirs, not writable by others, and so must the directories
    above them and any symlink on the way (`owned`); `img/` is no symlink."""
    from chjoin import owned

    real, problem = owned.resolve(storage, uid)
    img = f"{real}/img"
    entry = f"{img}/{name}"
    problem = (problem or owned.dir_problem(real, uid)
               or owned.entry_problem(img, uid, sticky_ok=False))
    if problem:
        return entry, problem
    real_entry, problem = owned.resolve(entry, uid)
    return real_entry, problem or owned.entry_problem(real_entry, uid, sticky_ok=False)


def _own_storage(storage, uid):
    """Whether `storage` is `uid`'s own (as `storage_problem` judges it): only then does it
    fence off the images inside it; a storage directory another user made (or points
    elsewhere with a symlink) must not deny us the images it happens to cover."""
    from chjoin import owned

    real, problem = owned.resolve(storage, uid)
    return not (problem or owned.dir_problem(real, uid))


def find(ref, storage, unsafe=False, warn=None, distrust=None):
    """The image that `ref` names, or a `Fatal` saying why it names none. `unsafe` (--unsafe)
    allows a directory anywhere inside the storage directory (or the storage itself), which
    ch-run refuses without it (when that storage is this user's own); `warn(message)`, when
    given, is told that a storage directory that does not exist was searched for a name that is
    no path either.
    A name is looked up in storage only if the storage is this user's own (`storage_problem`):
    otherwise `distrust(message)` is told, and `ref` is taken as a path."""
    if not ref:
        raise Fatal("can't find image: empty name")
    named = os.path.join(storage, "img", storage_name(ref))
    if storage and os.path.isdir(named):        # `-s ''` names no storage: no lookup
        entry, problem = storage_problem(storage, storage_name(ref), os.geteuid())
        if not problem:
            return Image(entry, by_name=True)
        if distrust is not None:
            distrust(f"image {ref} not run from storage: {problem}; taking it as a path")
    try:
        is_dir = stat.S_ISDIR(os.stat(ref).st_mode)
    except OSError as e:
        if warn is not None and not os.path.exists(storage):
            warn(f"storage directory not found: {storage}")
        raise Fatal(f"can't stat: {ref}: {e.strerror}") from None
    if is_dir:
        path = os.path.realpath(ref)
        inside = storage and os.path.realpath(storage).rstrip("/") + "/"
        if (inside and (path + "/").startswith(inside) and not unsafe   # ch-run's path_subdir_p
                and _own_storage(storage, os.geteuid())):
            raise Fatal("can't run directory images from storage (hint: run by name)")
        return Image(path, by_name=False)
    try:
        with open(ref, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise Fatal(f"can't open: {ref}: {e.strerror}") from None
    if magic == SQUASHFS_MAGIC:
        return Image(os.path.realpath(ref), by_name=False, squashfs=True)
    raise Fatal(f"unknown image type: {ref}")


def default_mount(user_name):
    """ch-run's default SquashFS mount point (-m): /var/tmp/$USER.ch/mnt."""
    return f"/var/tmp/{user_name}.ch/mnt"


def squashfs_problem(header, size):
    """What makes a file that starts with `header` (its first 96 bytes or more) and has `size`
    bytes no SquashFS image that squashfuse_ll can serve, or "" (pure: the superblock only)."""
    if len(header) < _SUPERBLOCK.size or header[:4] != SQUASHFS_MAGIC:
        return "not a SquashFS file"
    fields = _SUPERBLOCK.unpack_from(header)
    block_size, block_log, major, minor, bytes_used = (fields[3], fields[6], fields[9],
                                                       fields[10], fields[12])
    if (major, minor) != (4, 0):
        return f"SquashFS version {major}.{minor}; only 4.0 is supported"
    if block_log > 20 or block_size != 1 << block_log:
        return f"corrupt superblock: block size {block_size}, log {block_log}"
    if bytes_used > size:
        return f"truncated: {size} bytes, its superblock says {bytes_used}"
    return ""


def find_squashfuse(environ):
    """The path of squashfuse_ll on the launch's $PATH, or None."""
    for directory in environ.get("PATH", os.defpath).split(":"):
        path = f"{directory or '.'}/{SQUASHFUSE}"
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def fuse_problem():
    """Why this user can't use /dev/fuse, or ""."""
    if not os.path.exists(FUSE_DEVICE):
        return f"{FUSE_DEVICE} does not exist (the kernel has no FUSE)"
    if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        mode = stat.S_IMODE(os.stat(FUSE_DEVICE).st_mode)
        return (f"{FUSE_DEVICE} is mode {mode:o}: not usable by this user; an admin must make "
                "it 0666 (udev does; `chmod 0666 /dev/fuse` where there is no udev)")
    return ""


def squashfs_supported(environ):
    """--feature=squash: whether a SquashFS image can run here (squashfuse_ll, /dev/fuse)."""
    return find_squashfuse(environ) is not None and not fuse_problem()


def _squash_error(message):
    return Fatal(message, EXIT_SQUASH)


class SquashDaemon:
    """The `squashfuse_ll` of one container: made (helper forked) before `unshare`, then
    `mount()`ed from inside the new mount namespace. See the module's docstring."""

    def __init__(self, image, mount_dir, environ, single_threaded=False):
        """Check everything that can be checked outside, then fork the helper. `image` is the
        real path of the SquashFS file, `mount_dir` the -m directory (created if missing)."""
        import _socket

        self.image, self.mount_dir, self.real_mount = image, mount_dir, mount_dir
        program = find_squashfuse(environ)
        if program is None:
            raise _squash_error(f"can't mount SquashFS image {image}: {SQUASHFUSE} not found "
                                "on $PATH (install Debian's squashfuse)")
        problem = fuse_problem()
        if problem:
            raise _squash_error(f"can't mount SquashFS image {image}: {problem}")
        self.real_mount = make_mount_point(mount_dir, os.geteuid())
        image_fd = self._open_image()
        try:
            self.socket, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM, 0)
            self.stderr, their_stderr = os.pipe()
            try:
                _spawn_helper(program, image_fd, theirs.fileno(), their_stderr,
                              single_threaded)
            finally:
                theirs.close()
                os.close(their_stderr)
        finally:
            os.close(image_fd)

    def _open_image(self):
        try:
            fd = os.open(self.image, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise _squash_error(f"can't open SquashFS image {self.image}: {e.strerror}") from None
        problem = squashfs_problem(os.pread(fd, 96, 0), os.fstat(fd).st_size)
        if problem:
            os.close(fd)
            raise _squash_error(f"can't mount SquashFS image {self.image}: {problem}")
        return fd

    def mount(self):
        """In the launch's new user + mount namespace: mount the image at the mount point and
        hand the daemon its descriptor; returns the mount point once the daemon serves it."""
        import _socket

        from chjoin import libc

        what = f"can't mount SquashFS image {self.image} at {self.mount_dir}"
        try:
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            try:
                fuse = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                raise _squash_error(f"{what}: {FUSE_DEVICE}: {e.strerror}") from None
            try:
                libc.mount(SQUASHFUSE, self.real_mount, f"fuse.{SQUASHFUSE}",
                           libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV,
                           f"fd={fuse},rootmode=40000,user_id=0,group_id=0")
                self.socket.sendmsg([b"F"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                              struct.pack("i", fuse))])
            except OSError as e:
                raise _squash_error(f"{what}: {e.strerror}") from None
            finally:
                os.close(fuse)
        finally:
            self.socket.close()
        try:
            root = os.stat(self.real_mount)     # returns once the daemon has answered INIT
        except OSError as e:
            if e.errno == 107:                  # ENOTCONN: the daemon exited; it said why
                said = self._daemon_said()
                raise _squash_error(f"{what}: {SQUASHFUSE} failed: "
                                    f"{said or e.strerror}") from None
            raise _squash_error(f"{what}: can't read its root directory: {e.strerror} "
                                "(a corrupt image?)") from None
        finally:
            os.close(self.stderr)
        if not stat.S_ISDIR(root.st_mode):
            raise _squash_error(f"{what}: its root is not a directory (a corrupt image?)")
        return self.real_mount

    def _daemon_said(self):
        """The first line the daemon wrote on its stderr before it exited (1 s at most)."""
        import time

        os.set_blocking(self.stderr, False)
        text = b""
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            try:
                chunk = os.read(self.stderr, 4096)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            if not chunk:
                break
            text += chunk
        lines = [line.strip() for line in text.decode(errors="replace").splitlines()]
        return next((line for line in lines if line), "")


def make_mount_point(mount_dir, uid):
    """Make the SquashFS mount point `mount_dir` where missing (0755, each directory), once the
    directories above it and the symlinks on the way are known to be `uid`'s or root's (and the
    directories writable by nobody else); then check it too, and return its real path. A
    `Fatal` (exit 84) names a directory or symlink another user controls, and its owner: they
    could make the container's root their own tree."""
    from chjoin import owned

    real, problem = owned.resolve(mount_dir, uid, missing_ok=True)
    if problem:
        raise _squash_error(f"can't make SquashFS mount point {mount_dir}: {problem}")
    missing, existing = [], real
    while not os.path.lexists(existing):
        missing.append(existing)
        existing = os.path.dirname(existing)
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass          # made meanwhile: by whom, the check below says
        except OSError as e:
            reason = "Not a directory" if e.errno == 20 else e.strerror
            raise _squash_error(f"can't make SquashFS mount point {mount_dir}: "
                                f"{reason}") from None
        problem = owned.entry_problem(path, uid)    # before going deeper: no symlink, ours
        if problem:
            raise _squash_error(f"can't make SquashFS mount point {mount_dir}: {problem}")
    real, problem = owned.resolve(mount_dir, uid)
    if not problem:
        try:
            st = os.lstat(real)
        except OSError as e:
            raise _squash_error(f"can't make SquashFS mount point {mount_dir}: "
                                f"{e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise _squash_error(f"can't make SquashFS mount point {mount_dir}: Not a directory")
        problem = owned.entry_problem(real, uid, st)
    if problem:
        raise _squash_error(f"can't use SquashFS mount point {mount_dir}: {problem}")
    return real


def _spawn_helper(program, image_fd, socket_fd, stderr_fd, single_threaded=False):
    """Double-fork the daemon's helper in its own session, outside any namespace we make next;
    returns once the intermediate child is reaped (the helper is nobody's child of ours, so the
    command we exec never inherits it)."""
    import _signal as signal

    leaving = {signal.SIGINT, signal.SIGHUP, signal.SIGTERM}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, leaving)
    child = os.fork()
    if child == 0:
        try:
            os.setsid()       # no Ctrl-C, Ctrl-Z or process-group signal stops or kills it
            if os.fork() == 0:
                for signum in (*leaving, signal.SIGPIPE):
                    signal.signal(signum, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_SETMASK, ())
                _helper(program, image_fd, socket_fd, stderr_fd, single_threaded)
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _helper(program, image_fd, socket_fd, stderr_fd, single_threaded=False):
    """The helper: hold nothing but the socket, the image and the stderr pipe; wait for the
    /dev/fuse descriptor (EOF: the launch failed first, leave) and become the daemon.

    SIGINT, SIGHUP and SIGTERM stay ignored through the exec (libfuse installs its handlers only
    over SIG_DFL): the daemon outlives Slurm's SIGTERM, so ranks can shut down cleanly, and
    ends with the container."""
    import _socket

    keep = sorted((image_fd, socket_fd, stderr_fd))
    low = 3
    for fd in keep:
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 0x7FFFFFFF)
    os.chdir("/")
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(stderr_fd, 2)
    for fd in (null, stderr_fd):
        if fd > 2:
            os.close(fd)
    sock = _socket.socket(fileno=socket_fd)
    _data, ancillary, _flags, _address = sock.recvmsg(1, _socket.CMSG_SPACE(4))
    if not ancillary:
        os._exit(0)
    fuse = struct.unpack("i", ancillary[0][2][:4])[0]
    sock.close()
    os.set_inheritable(fuse, True)
    os.set_inheritable(image_fd, True)
    try:
        single = ["-s"] if single_threaded else []     # --fuse-single
        os.execv(program, [program, "-f", *single, f"/dev/fd/{image_fd}", f"/dev/fd/{fuse}"])
    except OSError as e:
        os.write(2, f"can't exec {program}: {e.strerror}\n".encode())
    os._exit(127)


METADATA = "/ch/metadata.json"      # ch-image's record of the image: ENTRYPOINT and CMD too


def default_command_reader():
    """`default_command`, with what it needs imported now, outside the container."""
    import json  # noqa: F401  (imported here: inside the container our venv is out of sight)

    return default_command


def default_command(given, log, metadata=METADATA):
    """The command when none was given (`chjoin IMG`) or it is `-` (`chjoin IMG -- - ARG...`),
    read inside the container from the image's /ch/metadata.json as Docker's rules combine
    ENTRYPOINT and CMD: no command runs ENTRYPOINT + CMD; `-` runs ENTRYPOINT + the ARGs that
    follow it, or ENTRYPOINT + CMD when none do."""
    import json

    try:
        with open(metadata, "rb") as f:
            data = json.loads(f.read())
    except OSError as e:
        raise Fatal(f"no command given and can't read {metadata}: {e.strerror}") from None
    except ValueError as e:
        raise Fatal(f"no command given and can't parse {metadata}: {e}") from None
    command = command_from_metadata(given, data if isinstance(data, dict) else {}, metadata)
    log.info(f"default command: {' '.join(command)} (from {metadata})")
    return command


def command_from_metadata(given, data, where=METADATA):
    """Pure: the command `given` (() or ("-", ARG...)) resolved against metadata `data`."""
    def words(key):
        value = data.get(key)
        if value is None:
            return []
        if isinstance(value, str):          # the shell form, as ch-image may store it
            return [*data.get("shell", ["/bin/sh", "-c"]), value]
        if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
            raise Fatal(f"{where}: {key} must be a list of strings")
        return value

    entrypoint, cmd = words("entrypoint"), words("cmd")
    args = list(given[1:])
    command = entrypoint + (args or cmd)
    if not command:
        raise Fatal(f"no command given and the image has no ENTRYPOINT or CMD ({where})")
    return tuple(command)
