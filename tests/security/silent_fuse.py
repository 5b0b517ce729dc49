"""A FUSE file system that answers INIT and then reads every request and answers none: a
process that touches it blocks in the kernel where even SIGKILL does not end it (a request the
daemon has read is waited for uninterruptibly), as on a hung network file system. Root only
(it mounts on the host). Closing the device aborts the connection and frees them all."""

import contextlib
import ctypes
import os
import struct
import subprocess
import sys
import time

INIT = 26


def _serve(fd):
    while True:
        try:
            request = os.read(fd, 1 << 21)
        except OSError:
            return
        length, opcode, unique = struct.unpack_from("<IIQ", request)
        if opcode == INIT:       # protocol 7.22's reply: major minor readahead flags bg cong write
            body = struct.pack("<IIIIHHI", 7, 22, 0, 0, 1, 1, 4096)
            os.write(fd, struct.pack("<IiQ", 16 + len(body), 0, unique) + body)
        # anything else: read, never answered


@contextlib.contextmanager
def silent_mount(mnt):
    """Mount the silent file system on directory `mnt` (allow_other) for the duration."""
    fd = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    options = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    if libc.mount(b"chjoin-silent", str(mnt).encode(), b"fuse", 6, options) != 0:   # nosuid nodev
        os.close(fd)
        raise OSError(ctypes.get_errno(), f"mount {mnt}")
    server = subprocess.Popen([sys.executable, "-I", __file__, str(fd)], pass_fds=[fd])
    os.close(fd)
    try:
        time.sleep(0.2)              # INIT answered: the mount is the server's
        yield mnt
    finally:
        server.kill()                # its end closes the device: every waiter gets ENOTCONN
        server.wait()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
