"""chjoin.mpi.join_params under a real `mpirun` (Open MPI): ranks of a Python MPI program that
start containers from their ranks end up in one container per node."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import world_readable_dir

PROGRAM = """
import subprocess, sys
from chjoin.mpi import join_params
tag, count = join_params()
done = subprocess.run([sys.argv[1], f"--join-tag={tag}", f"--join-ct={count}", sys.argv[2],
                       "--", "readlink", "/proc/self/ns/mnt"], capture_output=True, text=True)
print(tag, count, done.returncode, done.stdout.strip(), done.stderr.strip(), flush=True)
"""


@pytest.fixture
def program():
    base = world_readable_dir("chjoin-mpi-")
    path = base / "prog.py"
    path.write_text(PROGRAM)
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(base, ignore_errors=True)


def test_importing_chjoin_never_imports_mpi4py_MPI():
    code = "import sys, chjoin.cli, chjoin.mpi; print('mpi4py.MPI' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_join_params_put_an_mpi_programs_containers_in_one(as_user, image, program):
    if not shutil.which("mpirun"):
        pytest.fail("Open MPI's mpirun is missing (ci/install installs openmpi-bin)")
    env = as_user.env({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                       "OMPI_MCA_rmaps_base_oversubscribe": "1"})
    done = subprocess.run(["mpirun", "-n", "4", sys.executable, str(program), as_user.chjoin,
                           str(image)], capture_output=True, text=True, env=env, timeout=120,
                          cwd="/", **as_user.identity_kwargs())
    assert done.returncode == 0, done.stderr
    lines = [line.split(" ", 4) for line in done.stdout.splitlines()]
    assert len(lines) == 4, done.stdout
    assert {(tag, count, code) for tag, count, code, *_ in lines} == {(lines[0][0], "4", "0")}
    assert len({fields[3] for fields in lines}) == 1
    assert lines[0][3] != os.readlink("/proc/self/ns/mnt")
