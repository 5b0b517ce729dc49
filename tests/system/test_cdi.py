"""-d/--cdi: CDI specs (JSON and YAML) with fake devices and libraries built here, as root and as
the test user. The device nodes are real host nodes (/dev/null, /dev/zero, /dev/fuse), the
library is a real shared object and a program linked against it: it runs inside only if the
image's ldconfig found it. Every bad input is one line and exit 31; --join of 8 ranks with -d is
one container with every rank's environment and one ldconfig; a rank asking for other devices
gets a group of its own."""

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import build_fake_library, world_readable_dir

SPECS = ("/usr/share/gocode/src/github.com/container-orchestrated-devices/"
         "container-device-interface/schema")
ERROR = re.compile(r"chjoin\[\d+\]: error: (.+)\n")
NS = "echo $(readlink /proc/self/ns/user) $(readlink /proc/self/ns/mnt)"


def the_error(result):
    """The one error line's message (after the warnings reprint, if any)."""
    lines = [line for line in result.stderr.splitlines(True) if ": error: " in line]
    assert len(lines) == 1, result.stderr
    return ERROR.fullmatch(lines[0]).group(1)


def write(path, doc):
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    os.chmod(path, 0o644)
    return path


def fake_spec(kind="vendor.com/dev", env="VENDOR_VISIBLE=1", **top):
    """A spec of three devices on real host nodes, each with its own environment."""
    return {"cdiVersion": "0.5.0", "kind": kind,
            "devices": [
                {"name": "0", "containerEdits": {"env": ["DEV0=yes"],
                                                 "deviceNodes": [{"path": "/dev/null"}]}},
                {"name": "1", "containerEdits": {"env": ["DEV1=yes"],
                                                 "deviceNodes": [{"path": "/dev/zero",
                                                                  "type": "c"}]}},
                {"name": "fuse", "containerEdits": {"env": ["DEVFUSE=yes"],
                                                    "deviceNodes": [{"path": "/dev/fuse"}]}}],
            "containerEdits": {"env": [env], **top}}


@pytest.fixture
def cdi(as_user):
    """A world-readable directory for specs: `cdi.dir`, and `cdi.env` for $CH_RUN_CDI_DIRS."""
    base = world_readable_dir("chjoin-cdi-")

    class Dirs:
        dir = base / "etc"
        run = base / "run"
        env = {"CH_RUN_CDI_DIRS": f"{base}/etc:{base}/run"}
    for d in (Dirs.dir, Dirs.run):
        d.mkdir()
        os.chmod(d, 0o755)
    Dirs.base = base
    yield Dirs
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def fake_library():
    """libfake.so.1 (soname libfake.so.1) and fakeprog, linked against it with no rpath."""
    base = world_readable_dir("chjoin-cdi-lib-")
    build_fake_library(base)
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def library_spec(lib, kind="vendor.com/lib", hooks=()):
    return {"cdiVersion": "0.5.0", "kind": kind,
            "devices": [{"name": "all",
                         "containerEdits": {"deviceNodes": [{"path": "/dev/null"}]}}],
            "containerEdits": {
                "env": ["LIB_INJECTED=1"],
                "mounts": [{"hostPath": f"{lib}/libfake.so.1",
                            "containerPath": "/opt/fake/lib/libfake.so.1",
                            "options": ["ro", "nosuid", "nodev", "bind"]},
                           {"hostPath": f"{lib}/fakeprog",
                            "containerPath": "/opt/fake/bin/fakeprog", "options": ["ro", "bind"]}],
                "hooks": list(hooks)}}


# --- devices and the environment ---------------------------------------------------------------

def test_named_devices_get_their_own_edits_and_the_specs(as_user, image, cdi):
    write(cdi.dir / "dev.json", fake_spec())
    result = as_user.run("-d", "vendor.com/dev=0,fuse", image, "--", "sh", "-c",
                         "echo $VENDOR_VISIBLE ${DEV0:-no} ${DEV1:-no} ${DEVFUSE:-no}",
                         env=cdi.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1 yes no yes\n"
    assert result.stderr == ""


@pytest.mark.parametrize("args", [["-d"], ["--cdi"], ["-d", "vendor.com/dev"],
                                  ["--cdi=vendor.com/dev=all"], ["-dvendor.com/dev"]])
def test_all_devices_of_a_kind(as_user, image, cdi, args):
    write(cdi.dir / "dev.json", fake_spec())
    result = as_user.run(*args, image, "--", "sh", "-c",
                         "echo $VENDOR_VISIBLE $DEV0 $DEV1 $DEVFUSE", env=cdi.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1 yes yes yes\n"


def test_a_yaml_spec_as_nvidia_writes_them(as_user, image, cdi):
    write(cdi.run / "vendor.yaml", "cdiVersion: 0.5.0\nkind: vendor.com/yaml\ndevices:\n"
          "- name: gpu0\n  containerEdits:\n    env: [YAML_DEV=gpu0]\n"
          "    deviceNodes:\n    - path: /dev/null\ncontainerEdits:\n  env:\n  - YAML_SPEC=1\n")
    result = as_user.run("-d", "vendor.com/yaml=gpu0", image, "--", "sh", "-c",
                         "echo $YAML_SPEC $YAML_DEV", env=cdi.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1 gpu0\n"


def test_a_spec_file_named_on_the_command_line(as_user, image, cdi):
    path = write(cdi.base / "mine.json", fake_spec(kind="vendor.com/file"))
    result = as_user.run(f"--cdi={path}", image, "--", "sh", "-c", "echo $VENDOR_VISIBLE $DEV1",
                         env={"CH_RUN_CDI_DIRS": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1 yes\n"


def test_the_later_directory_wins(as_user, image, cdi):
    write(cdi.dir / "a.json", fake_spec(env="FROM=etc"))
    write(cdi.run / "b.yaml", json.dumps(fake_spec(env="FROM=run")))   # JSON is YAML
    result = as_user.run("-v", "-d", "vendor.com/dev", image, "--", "sh", "-c", "echo $FROM",
                         env=cdi.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "run\n"
    assert f"CDI: vendor.com/dev: {cdi.run}/b.yaml overrides {cdi.dir}/a.json" in result.stderr
    swapped = as_user.run("-d", "vendor.com/dev", image, "--", "sh", "-c", "echo $FROM",
                          env={"CH_RUN_CDI_DIRS": f"{cdi.run}:{cdi.dir}"})
    assert swapped.stdout == "etc\n"


def test_cdi_environment_in_command_line_order(as_user, image, cdi):
    """As ch-run: each -d's variables where that -d is among --set-env and --unset-env."""
    write(cdi.dir / "dev.json", fake_spec())
    result = as_user.run("--set-env=VENDOR_VISIBLE=before", "-d", "vendor.com/dev=0",
                         "--set-env=AFTER=$VENDOR_VISIBLE", "--unset-env=DEV0", image, "--", "sh",
                         "-c", "echo $VENDOR_VISIBLE $AFTER ${DEV0:-unset}", env=cdi.env)
    assert result.stdout == "1 1 unset\n", result.stderr
    result = as_user.run("-d", "vendor.com/dev=0", "--set-env=VENDOR_VISIBLE=after", image, "--",
                         "sh", "-c", "echo $VENDOR_VISIBLE", env=cdi.env)
    assert result.stdout == "after\n", result.stderr


def test_d_implies_write_fake(as_user, image, cdi):
    write(cdi.dir / "dev.json", fake_spec())
    result = as_user.run("-d", image, "--", "sh", "-c", "echo x > /new && cat /new", env=cdi.env)
    assert (result.returncode, result.stdout) == (0, "x\n"), result.stderr
    assert not (image / "new").exists()


def test_the_host_dev_is_never_narrowed(as_user, image, cdi):
    """Only device 0 is asked for; the container's /dev is still the host's, whole."""
    write(cdi.dir / "dev.json", fake_spec())
    result = as_user.run("-d", "vendor.com/dev=0", image, "--", "ls", "/dev", env=cdi.env)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(os.listdir("/dev"))


def test_no_namespace_beyond_user_and_mount(as_user, image, cdi):
    write(cdi.dir / "dev.json", fake_spec())
    result = as_user.run("-d", image, "--", "sh", "-c",
                         "for n in pid net ipc uts; do readlink /proc/self/ns/$n; done",
                         env=cdi.env)
    host = [os.readlink(f"/proc/self/ns/{n}") for n in ("pid", "net", "ipc", "uts")]
    assert result.stdout.split() == host, result.stderr


def test_mounts_symlinks_and_hooks(as_user, image, cdi, host_dir):
    hook = {"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook"}
    spec = fake_spec(mounts=[
        {"hostPath": str(host_dir / "file"), "containerPath": "/opt/vendor/file",
         "options": ["ro", "bind"]},
        {"hostPath": "file", "containerPath": "/opt/vendor/relative", "options": ["rbind"]},
        {"hostPath": "tmpfs", "containerPath": "/opt/vendor/tmp", "type": "tmpfs"}],
        hooks=[{**hook, "args": ["nvidia-cdi-hook", "create-symlinks", "--link",
                                 "file::/opt/vendor/link"]},
               {**hook, "args": ["nvidia-cdi-hook", "chmod", "--mode", "755"]},
               {"hookName": "createContainer", "path": "/usr/bin/touch",
                "args": ["touch", "/tmp/chjoin-cdi-hook-ran"]}])
    write(cdi.dir / "file", "beside the spec\n")
    write(cdi.dir / "dev.json", spec)
    result = as_user.run("-v", "-d", "vendor.com/dev=0", image, "--", "sh", "-c",
                         "cat /opt/vendor/file /opt/vendor/relative /opt/vendor/link; "
                         "ls /opt/vendor", env=cdi.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("from the host\nbeside the spec\nfrom the host\n"
                             "file\nlink\nrelative\n")
    assert "CDI: ignoring non-bind mount: tmpfs -> /opt/vendor/tmp" in result.stderr
    assert "CDI: ignoring known hook: chmod: " in result.stderr
    assert re.search(r"warning: CDI: ignoring unknown hook: /usr/bin/touch "
                     r"/tmp/chjoin-cdi-hook-ran", result.stderr)
    assert not os.path.exists("/tmp/chjoin-cdi-hook-ran")
    quiet = as_user.run("-d", "vendor.com/dev=0", image, "--", "true", env=cdi.env)
    assert quiet.stderr.splitlines() == [
        f"chjoin[{quiet.stderr.split('[')[1].split(']')[0]}]: CDI: ignoring non-bind mount: "
        "tmpfs -> /opt/vendor/tmp",
        *[line for line in quiet.stderr.splitlines() if "unknown hook" in line]]


def test_the_images_ldconfig_finds_the_injected_library(as_user, host_image, cdi, fake_library):
    hook = {"hookName": "createContainer", "path": "/usr/bin/nvidia-ctk",
            "args": ["nvidia-ctk", "hook", "update-ldcache", "--folder", "/opt/fake/lib"]}
    write(cdi.dir / "lib.json", library_spec(fake_library, hooks=[hook]))
    without = as_user.run("-W", "-b", "/usr", host_image, "--", "sh", "-c",
                          "ls /opt/fake/bin/fakeprog", env=cdi.env)
    assert without.returncode != 0
    result = as_user.run("-v", "-d", "vendor.com/lib", "-b", "/usr", host_image, "--", "sh", "-c",
                         "/opt/fake/bin/fakeprog; /sbin/ldconfig -p | grep -c libfake; "
                         "cat /etc/passwd /etc/group", env=cdi.env)
    assert result.returncode == 0, result.stderr
    generated = as_user.run("-W", "-b", "/usr", host_image, "--", "cat", "/etc/passwd",
                            "/etc/group", env=cdi.env).stdout
    assert result.stdout == "hello from libfake\n1\n" + generated     # /etc as it was
    assert result.stderr.count("CDI: running: /sbin/ldconfig /opt/fake/lib") == 1, \
        result.stderr


def test_an_nvidia_ctk_shaped_spec(as_user, host_image, cdi, fake_library):
    """The structure `nvidia-ctk cdi generate` writes: devices by index, by UUID and `all`, the
    libraries and binaries in the spec's edits, NVIDIA's hooks; the nodes are stand-ins."""
    uuid = "GPU-4f6bd8b1-3b2c-7e3a-2a4e-1c9f8f8e0a11"
    hook = {"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook"}
    nodes = [{"path": "/dev/null"}, {"path": "/dev/zero"}]
    spec = {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
            "devices": [
                {"name": "0", "containerEdits": {"deviceNodes": [nodes[0]]}},
                {"name": uuid, "containerEdits": {"deviceNodes": [nodes[0]]}},
                {"name": "1", "containerEdits": {"deviceNodes": [nodes[1]]}},
                {"name": "all", "containerEdits": {"deviceNodes": nodes}}],
            "containerEdits": {
                "env": ["NVIDIA_VISIBLE_DEVICES=void"],
                "deviceNodes": [{"path": "/dev/fuse"}],
                "mounts": library_spec(fake_library)["containerEdits"]["mounts"],
                "hooks": [
                    {**hook, "args": ["nvidia-cdi-hook", "create-symlinks", "--link",
                                      "libfake.so.1::/opt/fake/lib/libfake.so"]},
                    {**hook, "args": ["nvidia-cdi-hook", "enable-cuda-compat",
                                      "--host-driver-version=555.42.06"]},
                    {**hook, "args": ["nvidia-cdi-hook", "update-ldcache", "--folder",
                                      "/opt/fake/lib"]}]}}
    write(cdi.run / "nvidia.yaml", json.dumps(spec, indent=2))
    for name in ("all", "0", uuid, "0,1"):
        result = as_user.run("-d", f"nvidia.com/gpu={name}", "-b", "/usr", host_image, "--", "sh",
                             "-c", "/opt/fake/bin/fakeprog; readlink /opt/fake/lib/libfake.so; "
                             "echo $NVIDIA_VISIBLE_DEVICES", env=cdi.env)
        assert result.returncode == 0, (name, result.stderr)
        assert result.stdout == "hello from libfake\nlibfake.so.1\nvoid\n"
        assert result.stderr == ""


# --- bad input -------------------------------------------------------------------------------

BAD = [
    # (spec file name, content, -d arguments, the message's pattern)
    (None, None, ["--cdi="], "^CDI: empty resource ID$"),
    (None, None, ["--cdi=vendor.com/a/b"], "^CDI: resource kind with multiple slashes$"),
    (None, None, ["--cdi=vendor.com/dev=bad name"], "^CDI: invalid device name: 'bad name'"),
    (None, None, ["--cdi-dirs=", "-d"], r"^--cdi-dirs: PATHS must be non-empty$"),
    (None, None, ["--cdi-dirs=/no/a:/no/b", "-d"], "^CDI: no directories found: /no/a:/no/b$"),
    (None, None, ["-d"], "^CDI: no resource files found: {etc}:{run}$"),
    ("dev.json", fake_spec(), ["-d", "other.com/dev"],
     "^CDI: no matching resources found: other.com/dev$"),
    ("dev.json", fake_spec(), ["-d", "vendor.com/dev=7"],
     r"^CDI: no such device: vendor.com/dev=7 in {etc}/dev.json \(its devices: 0, 1, fuse\)$"),
    ("bad.json", '{"cdiVersion": "0.5.0",\n "kind": }', ["-d"],
     "^CDI: JSON failed at byte 33: {etc}/bad.json: Expecting value$"),
    ("bad.yaml", "kind: [unclosed\n", ["-d"],
     "^CDI: YAML failed at line 2 column 1: {etc}/bad.yaml"),
    ("dev.json", fake_spec(env="NOEQUALS"), ["-d"],
     r"^CDI: invalid spec: {etc}/dev.json: containerEdits.env\[0\]: not NAME=VALUE: 'NOEQUALS'$"),
    ("dev.json", fake_spec(mounts=[{"hostPath": "/etc/hosts", "containerPath": "etc/hosts",
                                    "options": ["bind"]}]),
     ["-d"], "^CDI: can't bind relative guest path: etc/hosts$"),
    ("dev.json", {**fake_spec(), "cdiVersion": 5}, ["-d"],
     "^CDI: invalid spec: {etc}/dev.json: cdiVersion: must be a string$"),
    ("dev.json", {**fake_spec(), "devices": [{"name": "x"}]}, ["-d"],
     r"^CDI: invalid spec: {etc}/dev.json: devices\[0\].containerEdits: required$"),
    ("dev.json", fake_spec(deviceNodes=[{"path": "/dev/null", "uid": -1}]), ["-d"],
     r"^CDI: invalid spec: {etc}/dev.json: containerEdits.deviceNodes\[0\].uid: must be at "
     "least 0$"),
    ("dev.json", fake_spec(kind="nokind"), ["-d"],
     "^CDI: invalid spec: {etc}/dev.json: kind: 'nokind' is not VENDOR/CLASS$"),
    ("dev.json", fake_spec(deviceNodes=[{"path": "/dev/chjoin-no-such-gpu"}]), ["-d"],
     r"^CDI: device node not found: /dev/chjoin-no-such-gpu \(vendor.com/dev\): No such file "
     "or directory$"),
    ("dev.json", fake_spec(deviceNodes=[{"path": "/dev/null", "type": "b"}]), ["-d"],
     r"^CDI: not a device node of type b: /dev/null \(vendor.com/dev\)$"),
]


@pytest.mark.parametrize("name,content,args,pattern", BAD,
                         ids=[p[3][1:40] for p in BAD])
def test_bad_input_is_one_line_and_exit_31(as_user, image, cdi, name, content, args, pattern):
    if name:
        write(cdi.dir / name, content)
    before = open("/proc/self/mountinfo").read()
    result = as_user.run(*args, image, "--", "true", env=cdi.env)
    assert result.returncode == 31, result.stderr
    assert re.search(pattern.format(etc=cdi.dir, run=cdi.run), the_error(result)), result.stderr
    assert open("/proc/self/mountinfo").read() == before
    assert [n for n in os.listdir("/dev/shm") if "chjoin" in n] == []


@pytest.mark.parametrize("fixture", ["empty.json", "explicit-empty.json"])
def test_the_schemas_bad_fixtures_are_refused(as_user, image, cdi, fixture):
    shutil.copy(f"{SPECS}/testdata/bad/{fixture}", cdi.dir / fixture)
    os.chmod(cdi.dir / fixture, 0o644)
    result = as_user.run("-d", image, "--", "true", env=cdi.env)
    assert result.returncode == 31
    assert the_error(result) == {
        "empty.json": f"CDI: JSON failed at byte 0: {cdi.dir}/empty.json: Expecting value",
        "explicit-empty.json": f"CDI: invalid spec: {cdi.dir}/explicit-empty.json: "
                               "cdiVersion: required"}[fixture]


def test_the_schemas_good_fixture_needs_its_device(as_user, image, cdi):
    """minimal.json is valid: it gets as far as its device node, which this host lacks."""
    shutil.copy(f"{SPECS}/testdata/good/minimal.json", cdi.dir / "minimal.json")
    os.chmod(cdi.dir / "minimal.json", 0o644)
    result = as_user.run("-d", "vendor.com/device=myDevice", image, "--", "true", env=cdi.env)
    assert result.returncode == 31
    assert the_error(result).startswith("CDI: device node not found: /dev/card1 "
                                        "(vendor.com/device=myDevice)")


def test_a_missing_ldconfig_is_an_error(as_user, image, cdi, fake_library):
    write(cdi.dir / "lib.json", library_spec(fake_library))
    result = as_user.run("-d", image, "--", "true", env=cdi.env)
    assert result.returncode == 31
    assert the_error(result).startswith("CDI: ldconfig not found in the image")


def test_feature_json(as_user):
    for feature in ("json", "yaml"):
        assert as_user.run(f"--feature={feature}").returncode == 0


def test_a_launch_without_d_imports_no_cdi(as_user, image, cdi):
    write(cdi.dir / "dev.yaml", json.dumps(fake_spec()))
    env = {**cdi.env, "PYTHONPROFILEIMPORTTIME": "1"}
    plain = as_user.run(image, "--", "true", env=env)
    assert not re.search(r"\| (chjoin\.cdi|yaml|json)$", plain.stderr, re.M)
    with_d = as_user.run("-d", image, "--", "true", env=env)
    assert with_d.returncode == 0
    assert re.search(r"\| +yaml$", with_d.stderr, re.M)


# --- --join --------------------------------------------------------------------------------------

def test_eight_joined_ranks_one_container_every_environment_one_ldconfig(
        as_user, host_image, cdi, fake_library):
    write(cdi.dir / "lib.json", library_spec(fake_library))
    write(cdi.dir / "dev.json", fake_spec())
    ranks = [{"args": [f"--set-env=RANK={i}", "-d", "vendor.com/lib", "-d", "vendor.com/dev=1",
                       "-b", "/usr", str(host_image), "--", "sh", "-c",
                       f"{NS}; echo $RANK $LIB_INJECTED $DEV1 $VENDOR_VISIBLE; "
                       "/opt/fake/bin/fakeprog"]} for i in range(8)]
    group = as_user.group(["-v", "--join-ct=8", "--join-tag=cdi"], ranks, env=cdi.env)
    assert group.returncodes == [0] * 8, [r.stderr for r in group.ranks if r.returncode]
    assert len({r.stdout.splitlines()[0] for r in group.ranks}) == 1
    for i, rank in enumerate(group.ranks):
        assert rank.stdout.splitlines()[1:] == [f"{i} 1 yes 1", "hello from libfake"]
    assert sum(r.stderr.count("CDI: running: ") for r in group.ranks) == 1
    assert group.lingering == []


def test_a_rank_asking_for_other_devices_has_its_own_group(as_user, image, cdi):
    write(cdi.dir / "dev.json", fake_spec())
    show = [str(image), "--", "sh", "-c", f"{NS}; echo ${{DEV0:-no}} ${{DEV1:-no}}"]
    group = as_user.group(["--join-ct=2", "--join-tag=cdimis", "--join-timeout=2"],
                          [{"args": ["-d", "vendor.com/dev=0", *show]},
                           {"args": ["-d", "vendor.com/dev=1", *show]}],
                          env=cdi.env, stagger=0.5)
    assert group.returncodes == [0, 0], [r.stderr for r in group.ranks]
    assert re.fullmatch(
        r"chjoin\[\d+\]: warning: join: tag cdimis has a group with mount options -d "
        r"vendor\.com/dev=0@\S+/dev\.json, this rank -d vendor\.com/dev=1@\S+/dev\.json; this "
        r"rank starts a group of its own\n", group.ranks[1].stderr), group.ranks[1].stderr
    assert len({r.stdout.splitlines()[0] for r in group.ranks}) == 2
    assert [r.stdout.splitlines()[1] for r in group.ranks] == ["yes no", "no yes"]


def test_d_on_the_hosts_root_is_refused(as_user, cdi):
    write(cdi.dir / "dev.json", fake_spec())
    result = as_user.run("-d", "/", "--", "true", env=cdi.env)
    assert result.returncode == 31
    assert the_error(result) == ("--cdi invalid with the host's root as image: there is no "
                                 "image to overlay")


def test_d_with_w_writes_the_links_into_the_image(as_user, own_image, cdi):
    """-w instead of the implied -W: the image itself takes the links."""
    hook = {"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook",
            "args": ["nvidia-cdi-hook", "create-symlinks", "--link", "busybox::/bin/cdi-link"]}
    write(cdi.dir / "dev.json", fake_spec(hooks=[hook]))
    result = as_user.run("-w", "-d", own_image, "--", "readlink", "/bin/cdi-link", env=cdi.env)
    assert (result.returncode, result.stdout) == (0, "busybox\n"), result.stderr
    assert os.readlink(own_image / "bin" / "cdi-link") == "busybox"


def test_a_missing_device_fails_the_winner_and_every_peer(as_user, image, cdi):
    """The winner checks the device nodes, once; its failure reaches every waiting peer, with
    exit 31 and one line each, and nothing is left."""
    write(cdi.dir / "dev.json", fake_spec(deviceNodes=[{"path": "/dev/chjoin-no-such-gpu"}]))
    group = as_user.group(["--join-ct=3", "--join-tag=cdifail", "-d", image, "--", "true"],
                          [{}] * 3, env=cdi.env)
    assert group.returncodes == [31] * 3, [r.stderr for r in group.ranks]
    for rank in group.ranks:
        assert "CDI: device node not found: /dev/chjoin-no-such-gpu" in the_error(rank)
    assert group.lingering == []
    assert [n for n in os.listdir("/dev/shm") if f"chjoin-{as_user.uid}-" in n] == []
