"""`chjoinctl cdi generate`: a CDI spec for the host's NVIDIA GPUs, for sites without NVIDIA's
container toolkit (`nvidia-ctk cdi generate` writes the same shape): the device nodes in /dev,
the driver's libraries that `ldconfig -p` lists, its binaries on $PATH, a device per GPU by
index and by UUID (when nvidia-smi can tell), and `all`. chjoin applies it with `-d`; the
update-ldcache hook it names is emulated (chjoin runs the image's ldconfig), never run.
"""

import os
import re
import shutil
import subprocess

KIND = "nvidia.com/gpu"
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
LIBRARIES = re.compile(r"^lib(cuda|cudadebugger|nvidia-[a-z0-9-]+|nvcuvid|nvoptix)\.so(\.\d+)*$")
BINARIES = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
            "nvidia-cuda-mps-server")


class NoDevices(Exception):
    """This host shows no NVIDIA GPU."""


def gpus(dev="/dev"):
    """[(index, path)] of /dev/nvidiaN, by index."""
    found = []
    for name in os.listdir(dev):
        m = re.fullmatch(r"nvidia(\d+)", name)
        if m:
            found.append((int(m.group(1)), os.path.join(dev, name)))
    return sorted(found)


def uuids():
    """{index: uuid} from nvidia-smi, or {} when it is missing or fails."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {}
    done = subprocess.run([smi, "--query-gpu=index,uuid", "--format=csv,noheader"],
                          capture_output=True, text=True)
    if done.returncode:
        return {}
    return {int(i): u.strip() for i, _, u in (line.partition(",") for line in
                                               done.stdout.splitlines()) if i.strip().isdigit()}


def libraries():
    """The driver's libraries `ldconfig -p` lists (x86-64 / this ABI's first), real paths."""
    done = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True)
    found = {}
    for line in done.stdout.splitlines()[1:]:
        name, _, path = line.strip().partition(" => ")
        name = name.split(" ")[0]
        if LIBRARIES.match(name) and name not in found:
            found[name] = path.strip()
    return sorted(set(found.values()))


def spec(gpu_nodes, control_nodes, libs, binaries, gpu_uuids=None):
    """The spec (a dict) from what was found: pure, so that it can be checked without a GPU."""
    gpu_uuids = gpu_uuids or {}
    devices = []
    for index, path in gpu_nodes:
        edits = {"deviceNodes": [{"path": path}]}
        devices.append({"name": str(index), "containerEdits": edits})
        if index in gpu_uuids:
            devices.append({"name": gpu_uuids[index], "containerEdits": edits})
    devices.append({"name": "all", "containerEdits": {
        "deviceNodes": [{"path": path} for _, path in gpu_nodes]}})
    mounts = [{"hostPath": p, "containerPath": p, "options": ["ro", "nosuid", "nodev", "bind"]}
              for p in [*libs, *binaries]]
    edits = {"env": ["NVIDIA_VISIBLE_DEVICES=void"],
             "deviceNodes": [{"path": p} for p in control_nodes],
             "mounts": mounts}
    folders = sorted({os.path.dirname(p) for p in libs})
    if folders:
        args = ["nvidia-cdi-hook", "update-ldcache"]
        for folder in folders:
            args += ["--folder", folder]
        edits["hooks"] = [{"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook",
                           "args": args}]
    return {"cdiVersion": "0.5.0", "kind": KIND, "devices": devices, "containerEdits": edits}


def generate(dev="/dev"):
    """The spec of this host's GPUs; `NoDevices` when there are none."""
    nodes = gpus(dev)
    if not nodes:
        raise NoDevices(f"no NVIDIA GPU in {dev} (no {dev}/nvidia[0-9]*)")
    control = [os.path.join(dev, n) for n in CONTROL_NODES if os.path.exists(os.path.join(dev, n))]
    binaries = [p for p in (shutil.which(b) for b in BINARIES) if p]
    return spec(nodes, control, libraries(), [os.path.realpath(b) for b in binaries], uuids())


def dump(doc, fmt):
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(doc, sort_keys=False)
    import json

    return json.dumps(doc, indent=2) + "\n"
