"""What an MPI launch of two ranks got, as one JSON line from rank 0 (bench.py runs it under
mpirun, on the host, joined, and in separate containers):

- cma: whether rank 0 can read rank 1's memory with process_vm_readv(2) — the single copy that
  Open MPI's vader BTL and UCX's cma transport use between ranks on a node ("ok" or the errno
  name; it fails across user namespaces);
- libfabric: whether libfabric is mapped in rank 0 (Open MPI loaded its OFI components);
- pml: Open MPI's point-to-point layer left mapped after MPI_Init (ob1 or cm), if any;
- pidfd_getfd: whether rank 0 can take a descriptor of rank 1 with pidfd_open(2) +
  pidfd_getfd(2) — how UCX's CUDA-VMM path and Level Zero pass GPU memory handles ("ok" or the
  errno name; the same kernel check as CMA), and pidfd_us: microseconds per take, median
  (bench/pidfd_probe.py);
- pickled: whether mpi4py's pickled point-to-point (`comm.sendrecv`, which receives by matched
  probe, MPI_Mprobe) works ("ok" or the error);
- allreduce: the sum of 1..size, as a check that the ranks talk at all.

The probe's own exchanges use buffers (Sendrecv, Allreduce), which work in every case.
"""

import ctypes
import errno
import json
import os
import struct

from mpi4py import MPI

from pidfd_probe import fetch_from, secret_fd


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def read_other(pid, address, length):
    """process_vm_readv of `length` bytes at `address` in process `pid`: (bytes, None) or
    (None, errno name)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(length)
    local, remote = IoVec(ctypes.addressof(buf), length), IoVec(address, length)
    got = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if got < 0:
        return None, errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return buf.raw[:got], None


def mapped():
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "/" in line}
    names = {os.path.basename(p) for p in paths}
    pml = sorted(n[len("mca_pml_"):-3] for n in names if n.startswith("mca_pml_"))
    return any(n.startswith("libfabric") for n in names), pml


def main():
    comm = MPI.COMM_WORLD
    assert comm.size == 2, "run with two ranks"
    secret = ctypes.create_string_buffer(b"chjoin-cma-probe", 16)
    handle = secret_fd()
    mine = (os.getpid(), ctypes.addressof(secret), handle)
    other = 1 - comm.rank
    theirs = bytearray(24)
    comm.Sendrecv(struct.pack("QQQ", *mine), other, 0, theirs, other, 0)
    pid, address, fd = struct.unpack("QQQ", theirs)
    data, error = read_other(pid, address, 16)
    cma = error or ("ok" if data == b"chjoin-cma-probe" else "wrong data")
    pidfd, pidfd_us = fetch_from(pid, fd)
    libfabric, pml = mapped()
    try:
        pickled = "ok" if comm.sendrecv(comm.rank, dest=other, source=other) == other else "wrong"
    except MPI.Exception as e:
        pickled = e.Get_error_string().strip()
    total = bytearray(8)
    comm.Allreduce(struct.pack("q", comm.rank + 1), total, op=MPI.SUM)
    comm.Barrier()                                  # rank 1 keeps `secret` until rank 0 read it
    if comm.rank == 0:
        print(json.dumps({"cma": cma, "pidfd_getfd": pidfd, "pidfd_us": pidfd_us,
                          "libfabric": libfabric, "pml": pml, "pickled": pickled,
                          "allreduce": struct.unpack("q", total)[0]}), flush=True)


if __name__ == "__main__":
    main()
