"""pytest-mpi tests, run by tests/slurm/test_mpi.py under `mpirun -n 4 python -m pytest
--with-mpi tests/mpi` and `srun --mpi=pmix`: chjoin.mpi.join_params() against the launcher's
environment, and ranks that start `chjoin --join` children. $CHJOIN and $CHJOIN_TEST_IMAGE
name the launcher and a busybox image."""

import os
import socket
import subprocess

import pytest

from chjoin import peers
from chjoin.mpi import join_params


@pytest.mark.mpi(min_size=2)
def test_join_params_agree_with_the_launchers_environment():
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    tag, count = join_params()
    group = peers.find(os.environ, peers.this_process(os.environ), None, None)
    seen = comm.allgather((socket.gethostname(), tag, count, group.tag, group.count))
    by_host = {}
    for host, *values in seen:
        by_host.setdefault(host, set()).add(tuple(values))
    for host, values in by_host.items():
        [(mpi_tag, mpi_count, env_tag, env_count)] = values    # one group per node, both ways
        assert mpi_count == env_count == sum(1 for h, *_ in seen if h == host)
    tags = {next(iter(values))[0] for values in by_host.values()}
    assert len(tags) == len(by_host)          # and every node's group has its own tag


@pytest.mark.mpi(min_size=2)
def test_ranks_that_start_chjoin_children_share_one_container_per_node():
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    tag, count = join_params()
    done = subprocess.run([os.environ["CHJOIN"], f"--join-tag={tag}", f"--join-ct={count}",
                           os.environ["CHJOIN_TEST_IMAGE"], "--", "readlink",
                           "/proc/self/ns/mnt"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = comm.allgather((socket.gethostname(), done.stdout.strip()))
    containers = {}
    for host, mnt in seen:
        containers.setdefault(host, set()).add(mnt)
    assert all(len(mnts) == 1 for mnts in containers.values()), containers
    assert len({mnt for mnts in containers.values() for mnt in mnts}) == len(containers)
    assert os.readlink("/proc/self/ns/mnt") not in containers[socket.gethostname()]
