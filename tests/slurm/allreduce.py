"""An MPI program for the tests: each rank prints its rank, the world size, the allreduce of
rank + 1 over all ranks, its host, and its user and mount namespaces."""

import os
import socket

from mpi4py import MPI

comm = MPI.COMM_WORLD
total = comm.allreduce(comm.Get_rank() + 1, op=MPI.SUM)
print(comm.Get_rank(), comm.Get_size(), total, socket.gethostname(),
      os.readlink("/proc/self/ns/user"), os.readlink("/proc/self/ns/mnt"), flush=True)
