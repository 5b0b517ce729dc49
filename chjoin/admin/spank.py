"""The SPANK plugin on this node: find it through plugstack.conf, compare the Slurm version it
was built for with this Slurm's, and build + install it from spank/ (`chjoinctl spank`)."""

import ctypes
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

PLUGSTACK = "/etc/slurm/plugstack.conf"
PLUGIN = "chjoin_spank.so"
SOURCES = ("Makefile", "chjoin_spank.c", "chjoin_spank.map", "ops.c", "ops.h")


def source_dir():
    """spank/ as installed with the package (share/chjoin/spank), else beside a checkout."""
    for candidate in (os.path.join(sys.prefix, "share", "chjoin", "spank"),
                      os.path.join(os.path.dirname(__file__), "..", "..", "spank")):
        if all(os.path.exists(os.path.join(candidate, f)) for f in SOURCES):
            return os.path.normpath(candidate)
    return None


def plugstack_lines(path=PLUGSTACK, depth=0):
    """[(file, line)] of the plugstack lines that load chjoin's plugin, following `include`."""
    found = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "include" and len(words) > 1 and depth < 4:
            for included in sorted(glob.glob(words[1])):
                found += plugstack_lines(included, depth + 1)
        elif len(words) > 1 and os.path.basename(words[1]) == PLUGIN:
            found.append((path, line.strip()))
    return found


def slurm_version():
    """This Slurm's (major, minor, micro) from `srun --version`, or None without Slurm."""
    if not shutil.which("srun"):
        return None
    try:
        out = subprocess.run(["srun", "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    return tuple(map(int, match.groups())) if match else None


def plugin_version(path):
    """The (major, minor, micro) of the Slurm headers plugin `path` was built with (its
    `plugin_version` symbol, which slurmstepd compares), or None when it won't load."""
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_LAZY | os.RTLD_LOCAL)
        number = ctypes.c_uint.in_dll(lib, "plugin_version").value
    except (OSError, ValueError):
        return None
    return (number >> 16, (number >> 8) & 0xff, number & 0xff)


def show(version):
    return ".".join(f"{v:02d}" if i == 1 else str(v) for i, v in enumerate(version)) \
        if version else "?"


def examine(plugstack=PLUGSTACK):
    """(status, tried, fix) of the installed plugin against this Slurm."""
    slurm = slurm_version()
    lines = plugstack_lines(plugstack)
    if slurm is None:
        return "warn", "srun --version: no Slurm here", "install Slurm to use srun --chjoin-image"
    if not lines:
        return ("warn", f"Slurm {show(slurm)}; no line loads {PLUGIN} in {plugstack} (or its "
                "includes)", "chjoinctl spank install (srun --chjoin-image needs it; srun chjoin "
                "--join works without)")
    file, line = lines[0]
    so = line.split()[1]
    if not os.path.exists(so):
        return ("fail", f"{file}: '{line}': {so} does not exist",
                "chjoinctl spank install, or remove the line")
    built = plugin_version(so)
    if built is None:
        return ("fail", f"{so} (from {file}) does not load", "chjoinctl spank install")
    if built[:2] != slurm[:2]:
        return ("fail", f"{so} (from {file}) was built for Slurm {show(built)}; this Slurm is "
                f"{show(slurm)}", "chjoinctl spank install (rebuilds it for this Slurm)")
    return "ok", f"{so} (from {file}) built for Slurm {show(built)}; srun is {show(slurm)}", ""


def install_plan(prefix, plugstack_dir, builder, source):
    """[(description, action)] of `spank install`: each action a callable or argv."""
    libdir = os.path.join(prefix, "lib", "slurm")
    so = os.path.join(libdir, PLUGIN)
    conf = os.path.join(plugstack_dir, "chjoin.conf")
    line = f"optional {so} builder={builder} timeout=60\n"
    build = tempfile.mkdtemp(prefix="chjoinctl-spank-")
    for f in SOURCES:
        shutil.copy(os.path.join(source, f), build)

    def write_conf():
        os.makedirs(plugstack_dir, exist_ok=True)
        with open(conf + ".tmp", "w") as f:
            f.write(line)
        os.rename(conf + ".tmp", conf)

    return build, [
        (f"build {PLUGIN} from {source} (make -C {build})", ["make", "-s", "-C", build]),
        (f"install {so}", ["install", "-D", "-m", "0644", os.path.join(build, PLUGIN), so]),
        (f"write {conf}: {line.strip()}", write_conf),
    ]
