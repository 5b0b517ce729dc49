"""A check for a GPU machine, one command: `python -m pytest tests/gpu` (as root: it also runs
the unprivileged test user). It generates a CDI spec from the host's driver (`nvidia-ctk cdi
generate` where installed, otherwise `chjoinctl cdi generate`), then runs `nvidia-smi -L` in a
container, 4 joined ranks that each see every GPU, and a CUDA IPC exchange between two joined
ranks when a CUDA Python package (cupy) is at hand. The parts that need a GPU skip, with the
reason, where no /dev/nvidia* exists; the CPU-only parts run everywhere."""

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HOST_BINDS, world_readable_dir

GPUS = sorted(glob.glob("/dev/nvidia[0-9]*"))
needs_gpu = pytest.mark.skipif(not GPUS, reason="no /dev/nvidia* on this machine: no NVIDIA GPU")
CHJOINCTL = str(Path(sys.executable).parent / "chjoinctl")

def _without(binds, path):
    """`binds` (-b SRC pairs) less `-b path`."""
    pairs = [binds[i:i + 2] for i in range(0, len(binds), 2)]
    return [a for pair in pairs if pair[1] != path for a in pair]


# The host's /usr and /opt, minus its linker cache: the spec's ldconfig writes the image's own
HOST = _without(HOST_BINDS, "/etc/ld.so.cache")


@pytest.fixture(scope="module")
def spec_dir():
    """A CDI directory holding a spec of this host's GPUs."""
    base = world_readable_dir("chjoin-gpu-cdi-")
    ctk = shutil.which("nvidia-ctk")
    if ctk:
        subprocess.run([ctk, "cdi", "generate", "--format=json", f"--output={base}/nvidia.json"],
                       check=True)
    else:
        subprocess.run([CHJOINCTL, "cdi", "generate", f"--output={base}/nvidia.json"], check=True)
    os.chmod(base / "nvidia.json", 0o644)
    yield {"CH_RUN_CDI_DIRS": str(base)}
    shutil.rmtree(base, ignore_errors=True)


def test_generate_without_a_gpu_says_so(tmp_path):
    """CPU-only: with no /dev/nvidia*, one line and exit 1."""
    (tmp_path / "dev").mkdir()
    done = subprocess.run([CHJOINCTL, "cdi", "generate", "--dev", str(tmp_path / "dev")],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr == (f"Error: no NVIDIA GPU in {tmp_path}/dev "
                           f"(no {tmp_path}/dev/nvidia[0-9]*)\n")


def test_a_generated_spec_has_nvidia_ctks_shape_and_passes_the_schema():
    """CPU-only: the spec the generator writes for two GPUs, checked as chjoin checks specs."""
    from chjoin import cdi
    from chjoin.admin import cdi as generator

    doc = generator.spec([(0, "/dev/nvidia0"), (1, "/dev/nvidia1")], ["/dev/nvidiactl"],
                         ["/usr/lib/x86_64-linux-gnu/libcuda.so.555.42.06"],
                         ["/usr/bin/nvidia-smi"], {0: "GPU-aaaa", 1: "GPU-bbbb"})
    assert [d["name"] for d in doc["devices"]] == ["0", "GPU-aaaa", "1", "GPU-bbbb", "all"]
    assert cdi.validate(json.loads(json.dumps(doc))) is None
    assert doc["containerEdits"]["hooks"][0]["args"] == [
        "nvidia-cdi-hook", "update-ldcache", "--folder", "/usr/lib/x86_64-linux-gnu"]


@needs_gpu
def test_nvidia_smi_in_a_container(chjoin, host_image, spec_dir):
    done = subprocess.run([chjoin, "-d", "nvidia.com/gpu=all", *HOST, str(host_image), "--",
                           "nvidia-smi", "-L"], capture_output=True, text=True,
                          env={**os.environ, **spec_dir}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("GPU ") == len(GPUS)


@needs_gpu
def test_joined_ranks_each_see_every_gpu(chjoin, host_image, spec_dir):
    argv = [chjoin, "--join-ct=4", "--join-tag=gpu", "-d", "nvidia.com/gpu", *HOST,
            str(host_image), "--", "sh", "-c",
            'echo "$(readlink /proc/self/ns/mnt) $(nvidia-smi -L | grep -c "^GPU ")"']
    ranks = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, **spec_dir}) for _ in range(4)]
    seen = [r.communicate(timeout=120)[0].split() for r in ranks]
    assert [r.returncode for r in ranks] == [0] * 4
    assert len({mnt for mnt, _ in seen}) == 1
    assert {count for _, count in seen} == {str(len(GPUS))}


CUDA_IPC = r"""
import os, sys, time, cupy
path = sys.argv[1]
if sys.argv[2] == "export":
    a = cupy.arange(16, dtype=cupy.int32)
    open(path + ".tmp", "wb").write(cupy.cuda.runtime.ipcGetMemHandle(a.data.ptr))
    os.rename(path + ".tmp", path)
    while not os.path.exists(path + ".done"):
        time.sleep(0.05)
else:
    while not os.path.exists(path):
        time.sleep(0.05)
    ptr = cupy.cuda.runtime.ipcOpenMemHandle(open(path, "rb").read())
    mem = cupy.cuda.UnownedMemory(ptr, 64, None)
    b = cupy.ndarray(16, cupy.int32, cupy.cuda.MemoryPointer(mem, 0))
    print(int(b.sum()))
    open(path + ".done", "w").close()
"""


@needs_gpu
def test_cuda_ipc_between_two_joined_ranks(chjoin, host_image, spec_dir, tmp_path):
    try:
        import cupy  # noqa: F401
    except ImportError:
        pytest.skip("no CUDA Python package (cupy) in this interpreter")
    script = tmp_path / "ipc.py"
    script.write_text(CUDA_IPC)
    handle = str(tmp_path / "handle")
    argv = [chjoin, "--join-ct=2", "--join-tag=cudaipc", "-d", "nvidia.com/gpu", *HOST,
            "-b", str(tmp_path), str(host_image), "--", sys.executable, str(script), handle]
    env = {**os.environ, **spec_dir}
    ranks = [subprocess.Popen([*argv, role], stdout=subprocess.PIPE, text=True, env=env)
             for role in ("export", "import")]
    out = [r.communicate(timeout=120)[0] for r in ranks]
    assert [r.returncode for r in ranks] == [0, 0]
    assert out[1].strip() == str(sum(range(16)))
