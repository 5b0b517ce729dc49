"""Real MPI programs in shared containers: Open MPI and MPICH, launched by srun (PMIx, PMI2),
by mpirun on one node, and by mpirun inside an allocation of 3 nodes; and the pytest-mpi suite
in tests/mpi under mpirun and srun. The program (allreduce.py) runs in `host_image` with the
host's Python, mpi4py and MPI bound in (HOST_BINDS).

Settings these launchers need (the README's "MPI in containers" has the why):
- Open MPI as root: OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM); more ranks than cores: oversubscribe.
- Open MPI: OMPI_MCA_pml=ob1. In a container Debian's Open MPI 4.1 can load libfabric's OFI
  MTL (on the host it can't); across the network-namespace nodes that hung in about 1 run of 3.
- MPICH with mpi4py: MPI4PY_MPIABI=mpich and LD_LIBRARY_PATH=/opt/mpich-abi (ci/install).
- MPICH 4.0.2 / UCX 1.13 over TCP between the network-namespace nodes hangs in MPI_Finalize in
  about half the runs, with or without chjoin (4 of 6 runs of plain `srun --mpi=pmi2 -N3 -n7
  python allreduce.py`). Under srun the ranks skip it (MPI4PY_RC_FINALIZE=0); under hydra,
  which fails a run whose ranks skip it, a run that hangs after the allreduce is cancelled.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import cluster, needs_nodes, submit  # noqa: F401
from conftest import HOST_BINDS, world_readable_dir

OPEN_MPI = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMPI_MCA_pml": "ob1"}
MPICH = {"MPI4PY_MPIABI": "mpich", "LD_LIBRARY_PATH": "/opt/mpich-abi"}
MPICH_NODES = {**MPICH, "MPI4PY_RC_FINALIZE": "0"}
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def program():
    base = world_readable_dir("chjoin-mpi-prog-")
    shutil.copy(HERE / "allreduce.py", base)
    (base / "allreduce.py").chmod(0o644)
    yield base / "allreduce.py"
    shutil.rmtree(base, ignore_errors=True)


def in_container(as_user, host_image, program):
    return [as_user.chjoin, "--join", *HOST_BINDS, str(host_image), "--", sys.executable,
            str(program)]


def assert_allreduce(done, ranks, layout):
    """Every rank summed 1..ranks; each host in `layout` ran that many ranks, all in one
    container of its own."""
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = [line.split() for line in done.stdout.splitlines() if line[:1].isdigit()]
    assert sorted(int(rank) for rank, *_ in lines) == list(range(ranks)), done.stdout
    assert {(size, total) for _rank, size, total, *_ in lines} == \
        {(str(ranks), str(ranks * (ranks + 1) // 2))}
    containers = {}
    for _rank, _size, _total, host, user, mnt in lines:
        containers.setdefault(host, []).append((user, mnt))
    assert sorted(len(c) for c in containers.values()) == sorted(layout), containers
    assert all(len(set(c)) == 1 for c in containers.values()), containers
    assert len({c[0] for c in containers.values()}) == len(containers)


def nodes_for(cluster):
    """(srun/salloc layout options, ranks per node) on this cluster."""
    if len(cluster.nodes) >= 3:
        return ["-N3", "-n7", "--exclusive"], [3, 2, 2]
    return ["-N1", "-n4"], [4]


def test_srun_pmix_open_mpi_allreduce(cluster, as_user, host_image, program):
    layout_args, layout = nodes_for(cluster)
    done = submit(as_user, ["srun", "--mpi=pmix", *layout_args,
                            *in_container(as_user, host_image, program)], env=OPEN_MPI)
    assert_allreduce(done, sum(layout), layout)


def test_srun_pmi2_mpich_allreduce(cluster, as_user, host_image, program):
    layout_args, layout = nodes_for(cluster)
    done = submit(as_user, ["srun", "--mpi=pmi2", *layout_args,
                            *in_container(as_user, host_image, program)], env=MPICH_NODES)
    assert_allreduce(done, sum(layout), layout)


def test_mpirun_open_mpi_on_one_node(as_user, host_image, program):
    done = submit(as_user, ["mpirun", "-n", "4", *in_container(as_user, host_image, program)],
                  env=OPEN_MPI)
    assert_allreduce(done, 4, [4])


def test_mpirun_mpich_hydra_on_one_node(as_user, host_image, program):
    done = submit(as_user, ["mpirun.mpich", "-n", "4",
                            *in_container(as_user, host_image, program)], env=MPICH)
    assert_allreduce(done, 4, [4])


@needs_nodes(3)
def test_mpirun_open_mpi_in_an_allocation_of_three_nodes(cluster, as_user, host_image, program):
    done = submit(as_user, ["salloc", "-N3", "-n7", "--exclusive", "mpirun", "-n", "7",
                            *in_container(as_user, host_image, program)], env=OPEN_MPI)
    assert_allreduce(done, 7, [3, 2, 2])


@needs_nodes(3)
def test_mpirun_mpich_hydra_in_an_allocation_of_three_nodes(cluster, as_user, host_image,
                                                            program):
    """Hydra needs every rank to finalize (a rank that exits without it fails the run), and
    MPI_Finalize over TCP between these nodes hangs about half the time, with or without
    chjoin (see the module's docstring). So: when the run outlives the allreduce by 20 s, the
    ranks' lines are checked and the job is cancelled; otherwise it must also exit 0."""
    argv = ["salloc", "-N3", "-n7", "--exclusive", "mpirun.mpich", "-n", "7",
            *in_container(as_user, host_image, program)]
    try:
        done = submit(as_user, argv, env=MPICH, timeout=30)
    except subprocess.TimeoutExpired as e:
        subprocess.run(["scancel", "-u", as_user.name], check=True)
        cluster.idle()
        done = subprocess.CompletedProcess(argv, 0, (e.stdout or b"").decode(),
                                           (e.stderr or b"").decode())
    assert_allreduce(done, 7, [3, 2, 2])


@pytest.fixture(scope="module")
def mpi_tests():
    base = world_readable_dir("chjoin-pytest-mpi-")
    shutil.copytree(HERE.parent / "mpi", base / "mpi")
    subprocess_chmod(base)
    yield base / "mpi"
    shutil.rmtree(base, ignore_errors=True)


def subprocess_chmod(path):
    import subprocess
    subprocess.run(["chmod", "-R", "a+rX", str(path)], check=True)


def pytest_mpi(as_user, image, mpi_tests):
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--color=no", "-q",
            "--with-mpi", str(mpi_tests)], {"CHJOIN": as_user.chjoin,
                                            "CHJOIN_TEST_IMAGE": str(image)}


def assert_every_rank_passed(done, ranks):
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert done.stdout.count("2 passed") == ranks, done.stdout


def test_pytest_mpi_suite_under_mpirun(as_user, image, mpi_tests):
    argv, env = pytest_mpi(as_user, image, mpi_tests)
    done = submit(as_user, ["mpirun", "-n", "4", *argv], env={**OPEN_MPI, **env})
    assert_every_rank_passed(done, 4)


def test_pytest_mpi_suite_under_srun_pmix(cluster, as_user, image, mpi_tests):
    layout_args, layout = nodes_for(cluster)
    argv, env = pytest_mpi(as_user, image, mpi_tests)
    done = submit(as_user, ["srun", "--mpi=pmix", *layout_args, *argv],
                  env={**OPEN_MPI, **env})
    assert_every_rank_passed(done, sum(layout))
