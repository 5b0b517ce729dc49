"""For Python MPI programs that start containers from their ranks: the join group from MPI.

    from chjoin.mpi import join_params
    tag, count = join_params()          # collective over COMM_WORLD (or the comm given)
    subprocess.run(["chjoin", f"--join-tag={tag}", f"--join-ct={count}", IMAGE, "--", ...])

The group is this node's part of the communicator (`COMM_TYPE_SHARED`); its tag is made by the
node's first rank and broadcast, so it names this run on this node and nothing else. The
launcher itself never initialises MPI (a process with MPI's threads can't enter a user
namespace); only the program that calls this does, and importing chjoin never imports
`mpi4py.MPI`.
"""

import os


def join_params(comm=None):
    """(tag, count) of the calling rank's node-local group. Collective: every rank of `comm`
    (default `MPI.COMM_WORLD`) must call it."""
    from mpi4py import MPI

    from chjoin.ns import start_time

    comm = MPI.COMM_WORLD if comm is None else comm
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        tag = None
        if local.Get_rank() == 0:
            tag = f"mpi.{os.getpid()}.{start_time(os.getpid())}"
        return local.bcast(tag, root=0), local.Get_size()
    finally:
        local.Free()
