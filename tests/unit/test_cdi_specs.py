"""chjoin.cdi without containers: -d values, the schema (chjoin's copy, Debian's, and its
fixtures), spec files, hooks, precedence, the environment's place among --set-env, join terms."""

import json
import os

import pytest

from chjoin import cdi, cli
from chjoin import env as envmod
from chjoin.log import Fatal, Log

DEBIAN = ("/usr/share/gocode/src/github.com/container-orchestrated-devices/"
          "container-device-interface/schema")


class Quiet(Log):
    def __init__(self):
        super().__init__(-2)
        self.lines = []

    def warning(self, message):
        self.lines.append(("warning", message))

    def info(self, message):
        self.lines.append(("info", message))


def test_request_forms():
    assert cdi.parse_request(cdi.ALL) == cdi.Request(cdi.ALL)
    assert cdi.parse_request("nvidia.com/gpu") == cdi.Request("nvidia.com/gpu", "nvidia.com/gpu")
    assert cdi.parse_request("nvidia.com/gpu=all").names == ("all",)
    assert cdi.parse_request("nvidia.com/gpu=0,GPU-1a2b,0").names == ("0", "GPU-1a2b")
    assert cdi.parse_request("/x/spec.yaml").path == "/x/spec.yaml"
    assert cdi.parse_request("spec.json").path == os.path.abspath("spec.json")


@pytest.mark.parametrize("text,message", [
    ("", "CDI: empty resource ID"),
    ("a.com/b/c", "CDI: resource kind with multiple slashes"),
    ("gpu", "CDI: invalid resource ID: gpu"),
    ("a.com/gpu=x y", "CDI: invalid device name: 'x y'"),
    ("a.com/gpu=0,", "CDI: invalid device name: ''"),
])
def test_bad_requests(text, message):
    with pytest.raises(Fatal) as e:
        cdi.parse_request(text)
    assert str(e.value).startswith(message)
    assert e.value.code == 31


def test_d_takes_a_device_name_after_a_space_but_not_an_image():
    assert cli.normalize(["-d", "nvidia.com/gpu=all", "/img", "--", "true"])[:2] == [
        "--cdi=nvidia.com/gpu=all", "/img"]
    assert cli.normalize(["--cdi", "vendor.com/x", "/img", "true"])[0] == "--cdi=vendor.com/x"
    assert cli.normalize(["-d", "/img", "--", "true"])[:2] == [f"--cdi={cli.CDI_ALL}", "/img"]
    assert cli.normalize(["-d", "./img", "--", "true"])[:2] == [f"--cdi={cli.CDI_ALL}", "./img"]
    assert cli.normalize(["-dvendor.com/x", "/img", "true"])[0] == "--cdi=vendor.com/x"
    # images named as ch-image stores them, and `-d IMAGE -- CMD`
    for image in ("nvcr.io/nvidia/pytorch:24.01", "docker.io/ubuntu:22.04"):
        assert cli.normalize(["-d", image, "true"])[:2] == [f"--cdi={cli.CDI_ALL}", image]
    assert cli.normalize(["-d", "vendor.com/img", "--", "true"])[:2] == [
        f"--cdi={cli.CDI_ALL}", "vendor.com/img"]


def test_chjoins_schema_is_the_cdi_projects():
    if not os.path.isdir(DEBIAN):
        pytest.fail("Debian's CDI package is missing (ci/install installs it)")
    for name in ("schema.json", "defs.json"):
        with open(f"{DEBIAN}/{name}") as a, open(f"{cdi.SCHEMA_DIR}/{name}") as b:
            assert json.load(a) == json.load(b)


@pytest.mark.parametrize("name", ["minimal.json", "spec-example.json"])
def test_the_schemas_good_fixtures_pass(name):
    with open(f"{DEBIAN}/testdata/good/{name}") as f:
        assert cdi.validate(json.load(f)) is None


def test_the_schemas_bad_fixture_fails():
    with open(f"{DEBIAN}/testdata/bad/explicit-empty.json") as f:
        assert cdi.validate(json.load(f)) == "cdiVersion: required"


@pytest.mark.parametrize("change,problem", [
    ({"kind": 1}, "kind: must be a string"),
    ({"devices": {}}, "devices: must be an array"),
    ({"devices": [{"containerEdits": {}}]}, "devices[0].name: required"),
    ({"devices": [{"name": "d", "containerEdits": {"mounts": [{"hostPath": "/a"}]}}]},
     "devices[0].containerEdits.mounts[0].containerPath: required"),
    ({"devices": [{"name": "d", "containerEdits": {"hooks": [{"hookName": "x", "path": "/p",
                                                              "timeout": 2 ** 32}]}}]},
     "devices[0].containerEdits.hooks[0].timeout: must be at most 4294967295"),
    ({"devices": [{"name": "d", "containerEdits": {"deviceNodes": [{"path": "/d",
                                                                    "major": True}]}}]},
     "devices[0].containerEdits.deviceNodes[0].major: must be an integer"),
])
def test_schema_problems_name_the_field(change, problem):
    doc = {"cdiVersion": "0.6.0", "kind": "a.com/b",
           "devices": [{"name": "d", "containerEdits": {}}], **change}
    assert cdi.validate(doc) == problem


def test_validation_with_debians_schema_files_agrees():
    schemas = cdi._schema(DEBIAN)
    doc = {"cdiVersion": "0.6.0", "kind": "a.com/b", "devices": [{"name": "d"}]}
    assert cdi.validate(doc, schemas=schemas, current=schemas[0]) == cdi.validate(doc)


def test_library_names_as_ch_run_tests_them():
    for yes in ("libcuda.so", "/usr/lib/libcuda.so.1", "libcuda.so.535.161.08"):
        assert cdi.is_library(yes), yes
    for no in ("libcuda.so.x", "libcuda.sox", ".so", "nvidia-smi", "lib.so.1a"):
        assert not cdi.is_library(no), no


def spec_file(tmp_path, name, doc):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def gpu_spec(**top):
    return {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
            "devices": [{"name": n, "containerEdits": {"env": [f"D{n}=1"],
                                                       "deviceNodes": [{"path": f"/dev/nv{n}"}]}}
                        for n in ("0", "1")],
            "containerEdits": {"env": ["TOP=1"], **top}}


def test_hooks_emulated_known_and_unknown(tmp_path):
    hook = {"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook"}
    path = spec_file(tmp_path, "s.json", gpu_spec(hooks=[
        {**hook, "args": ["nvidia-cdi-hook", "update-ldcache", "--folder", "/usr/lib64",
                          "--folder=/opt/lib"]},
        {**hook, "args": ["nvidia-cdi-hook", "create-symlinks", "--link",
                          "libcuda.so.1::/usr/lib64/libcuda.so"]},
        {"hookName": "createContainer", "path": "/usr/bin/nvidia-ctk",
         "args": ["nvidia-ctk", "hook", "chmod", "--mode", "755"]},
        {"hookName": "poststop", "path": "/bin/rm", "args": ["rm", "-rf", "/"]}]))
    log = Quiet()
    selection = cdi.select([path], None, {}, log)
    assert selection.ldconfig == ("/usr/lib64", "/opt/lib")
    assert selection.symlinks == (("libcuda.so.1", "/usr/lib64/libcuda.so"),)
    assert ("info", "CDI: ignoring known hook: chmod: /usr/bin/nvidia-ctk hook chmod --mode 755") \
        in log.lines
    assert ("warning", "CDI: ignoring unknown hook: /bin/rm -rf /") in log.lines


def test_devices_selected_and_their_edits(tmp_path):
    (tmp_path / "d").mkdir()
    spec_file(tmp_path / "d", "gpu.json", gpu_spec())
    one = cdi.select(["nvidia.com/gpu=1"], str(tmp_path / "d"), {}, Quiet())
    assert one.env == ((("TOP", "1"), ("D1", "1")),)
    assert [n[0] for n in one.nodes] == ["/dev/nv1"]
    both = cdi.select([cdi.ALL], str(tmp_path / "d"), {}, Quiet())
    assert [n[0] for n in both.nodes] == ["/dev/nv0", "/dev/nv1"]
    assert one.terms != both.terms
    assert cdi.select(["nvidia.com/gpu=all"], str(tmp_path / "d"), {}, Quiet()).terms == \
        cdi.select(["nvidia.com/gpu"], str(tmp_path / "d"), {}, Quiet()).terms == both.terms


def test_two_specs_of_one_kind_in_one_directory_is_ch_runs_error(tmp_path):
    spec_file(tmp_path, "a.json", gpu_spec())
    spec_file(tmp_path, "b.yaml", gpu_spec())
    with pytest.raises(Fatal, match="CDI: device found in multiple spec files: nvidia.com/gpu: "):
        cdi.select([cdi.ALL], str(tmp_path), {}, Quiet())


def test_a_spec_without_devices_as_ch_runs_faq_writes(tmp_path):
    path = spec_file(tmp_path, "cray.json", {
        "cdiVersion": "0.6.0", "kind": "ch/example",
        "containerEdits": {"env": ["FI_PROVIDER=cxi"], "mounts": [
            {"hostPath": "/opt/cray/libfabric.so.1.2.3", "containerPath":
             "/usr/local/lib/libfabric.so.1", "options": ["bind"]}]}})
    selection = cdi.select([path], None, {}, Quiet())
    assert selection.env == ((("FI_PROVIDER", "cxi"),),)
    assert selection.binds == (("/opt/cray/libfabric.so.1.2.3", "/usr/local/lib/libfabric.so.1"),)
    assert selection.ldconfig == ("/usr/local/lib",)


def test_search_dirs():
    assert cdi.search_dirs(None, {}) == "/etc/cdi:/var/run/cdi"
    assert cdi.search_dirs(None, {"CH_RUN_CDI_DIRS": "/a:/b"}) == "/a:/b"
    assert cdi.search_dirs("/c", {"CH_RUN_CDI_DIRS": "/a"}) == "/c"
    with pytest.raises(Fatal, match="^--cdi-dirs: PATHS must be non-empty$"):
        cdi.search_dirs("", {})


def test_cdi_environment_takes_its_place_among_the_env_options():
    tokens = ["--set-env=A=1", "--cdi=x.com/y", "--unset-env=B", "--cdi=\0all", "/img"]
    ops = cli.env_ops(tokens, [(("C", "2"),), (("D", "$A"),)])
    assert ops == (envmod.SetVars((("A", "1"),), True), envmod.SetVars((("C", "2"),), False),
                   envmod.Unset("B"), envmod.SetVars((("D", "$A"),), False))
    env = envmod.build({"B": "x"}, ops)
    assert (env["A"], env["C"], env["D"], "B" in env) == ("1", "2", "$A", False)


def test_help_names_the_options_as_ch_run():
    text = cli.help_text()
    assert "  -d, --cdi[=KIND]            inject CDI resource(s) KIND (repeatable)" in text
    assert "      --cdi-dirs=DIRS         director(y|ies) containing CDI specs" in text
    assert "json" in text.split("--feature=FEAT")[1].split("\n  -")[0]


def test_empty_cdi_dirs_is_refused_even_with_a_spec_file():
    tokens = cli.normalize(["--cdi-dirs=", "--cdi=/x.json", "/img", "--", "true"])
    options, image, command = cli.parse(tokens)
    from chjoin.log import Timings

    with pytest.raises(Fatal, match="^--cdi-dirs: PATHS must be non-empty$"):
        cli.make_launch(image, command, options, tokens, {"PATH": "/bin"}, Timings())
