"""-d through the SPANK plugin: `srun --chjoin-image=IMG --chjoin-args="-d vendor.com/dev=all"`
builds one container per node with the spec's devices, binds and ldconfig, once; every task gets
the spec's environment after its own options, as `srun chjoin --join -d` gives it."""

import json
import os
import re
import shutil
import subprocess

import pytest

from cluster import cluster, needs_nodes, submit  # noqa: F401
from conftest import build_fake_library, world_readable_dir
from test_spank import HOST_USER_NS, assert_nothing_left, errors, spank  # noqa: F401

SHOW = ["sh", "-c", 'echo "$(hostname) $(readlink /proc/self/ns/user) $(readlink /proc/self/ns/mnt)'
        ' $SLURM_PROCID ${DEV0:-no} ${DEV1:-no} $VENDOR_VISIBLE ${LIB_INJECTED:-no}"; '
        '[ -x /opt/fake/bin/fakeprog ] && /opt/fake/bin/fakeprog || true']


@pytest.fixture
def specs():
    """A CDI directory with a device spec on host nodes and a library spec (a library and a
    program built here), for $CH_RUN_CDI_DIRS."""
    base = world_readable_dir("chjoin-spank-cdi-")
    build_fake_library(base)
    (base / "cdi").mkdir()
    (base / "cdi" / "dev.json").write_text(json.dumps({
        "cdiVersion": "0.5.0", "kind": "vendor.com/dev",
        "devices": [{"name": "0", "containerEdits": {"env": ["DEV0=yes"],
                                                     "deviceNodes": [{"path": "/dev/null"}]}},
                    {"name": "1", "containerEdits": {"env": ["DEV1=yes"],
                                                     "deviceNodes": [{"path": "/dev/zero"}]}}],
        "containerEdits": {"env": ["VENDOR_VISIBLE=1"]}}))
    (base / "cdi" / "lib.yaml").write_text(
        "cdiVersion: 0.5.0\nkind: vendor.com/lib\ndevices:\n- name: all\n  containerEdits:\n"
        "    deviceNodes: [{path: /dev/null}]\ncontainerEdits:\n  env: [LIB_INJECTED=1]\n"
        "  mounts:\n"
        f"  - {{hostPath: {base}/libfake.so.1, containerPath: /opt/fake/lib/libfake.so.1, "
        "options: [ro, bind]}\n"
        f"  - {{hostPath: {base}/fakeprog, containerPath: /opt/fake/bin/fakeprog, "
        "options: [ro, bind]}\n")
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    yield {"CH_RUN_CDI_DIRS": str(base / "cdi")}
    shutil.rmtree(base, ignore_errors=True)


def lines(stdout):
    return [line.split() for line in stdout.splitlines() if line and not line.startswith("srun:")]


def srun(as_user, image, args, layout, env):
    return submit(as_user, ["srun", *layout, f"--chjoin-image={image}", f"--chjoin-args={args}",
                            *SHOW], env=env)


@pytest.mark.parametrize("layout,nodes,tasks", [
    pytest.param(["-N1", "-n4"], 1, 4, id="one-node"),
    pytest.param(["-N3", "-n7", "--exclusive"], 3, 7, id="three-nodes",
                 marks=pytest.mark.nodes(3))])
def test_d_through_the_plugin_one_build_and_one_ldconfig_per_node(
        cluster, spank, as_user, host_image, specs, layout, nodes, tasks):
    done = srun(as_user, host_image, "-v -b /usr -d vendor.com/dev=all -d vendor.com/lib",
                layout, specs)
    assert done.returncode == 0, done.stderr
    assert errors(done.stderr) == []
    shown = [line for line in lines(done.stdout) if line[0] != "hello"]
    assert len(shown) == tasks
    assert HOST_USER_NS not in {user for _host, user, *_ in shown}
    assert len({(host, mnt) for host, _u, mnt, *_ in shown}) == nodes    # one container per node
    assert [line[4:] for line in shown] == [["yes", "yes", "1", "1"]] * tasks
    assert done.stdout.count("hello from libfake") == len(shown)
    assert len(re.findall(r"CDI: running: \S*ldconfig /opt/fake/lib", done.stderr)) == nodes, \
        done.stderr
    assert_nothing_left(cluster, as_user)


def test_d_through_the_plugin_matches_srun_chjoin_join(cluster, spank, as_user, image, specs):
    """The same environment as `srun chjoin --join -d`, task by task (the spec's variables
    after --set-env, in command-line order)."""
    args = "--set-env=VENDOR_VISIBLE=mine -d vendor.com/dev=1 --set-env=AFTER=$VENDOR_VISIBLE"
    show = ["sh", "-c", "echo $SLURM_PROCID ${DEV0:-no} $DEV1 $VENDOR_VISIBLE $AFTER"]
    plugin = submit(as_user, ["srun", "-n3", f"--chjoin-image={image}", f"--chjoin-args={args}",
                              *show], env=specs)
    chjoin = submit(as_user, ["srun", "-n3", as_user.chjoin, "--join", *args.split(), str(image),
                              "--", *show], env=specs)
    assert plugin.returncode == chjoin.returncode == 0, (plugin.stderr, chjoin.stderr)
    assert sorted(plugin.stdout.splitlines()) == sorted(chjoin.stdout.splitlines()) == \
        [f"{i} no yes 1 1" for i in range(3)]


def test_a_bad_d_fails_every_task_with_one_line(cluster, spank, as_user, image, specs):
    done = srun(as_user, image, "-d vendor.com/dev=7", ["-n2"], specs)
    assert done.returncode == 31, done.stderr
    assert [re.sub(r"^chjoin\[\d+\]: ", "", e) for e in errors(done.stderr)] == [
        f"error: CDI: no such device: vendor.com/dev=7 in {specs['CH_RUN_CDI_DIRS']}/dev.json "
        "(its devices: 0, 1)"]
    assert_nothing_left(cluster, as_user)
