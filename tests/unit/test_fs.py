"""The filesystem plan (pure) and guest-path resolution."""

import pytest

from chjoin import fs
from chjoin.config import BindSpec, Identity, Launch
from chjoin.log import Fatal

ALICE = Identity(uid=1000, gid=1000, host_uid=1000, host_gid=1000, user_name="alice",
                 passwd_entry=("alice", "Alice A."), group_name="alice")


def launch(**kw):
    return Launch(image="/img", image_ref="/img", command=("true",), identity=ALICE, environ={},
                  **kw)


def dsts(ops, kind):
    return [op.dst for op in ops if isinstance(op, kind)]


def test_operations_come_in_ch_runs_order_and_the_users_binds_as_given():
    ops = fs.plan(launch(binds=(BindSpec("/data", "/tmp/data/sub"), BindSpec("/x", "/etc"),
                                BindSpec("/data", "/tmp/data")), private_tmp=True))
    assert isinstance(ops[0], fs.Root)
    order = [op.dst for op in ops[1:]]
    defaults = list(fs.REQUIRED_BINDS + fs.OPTIONAL_BINDS)
    assert order == defaults + ["/etc/passwd", "/etc/group", "/tmp",
                                "/tmp/data/sub", "/etc", "/tmp/data"]


def test_user_bind_on_a_default_path_comes_after_the_default():
    ops = fs.plan(launch(binds=(BindSpec("/my/hosts", "/etc/hosts"),)))
    hosts = [op for op in ops if op.dst == "/etc/hosts"]
    assert [op.src for op in hosts] == ["/etc/hosts", "/my/hosts"]


def test_required_binds_are_never_created_even_when_writable():
    for writable in ({}, {"write_fake": "12%"}, {"write": True}):     # as ch-run's BD_REQUIRED
        ops = {op.dst: op for op in fs.plan(launch(**writable))}
        assert not any(ops[p].create or ops[p].optional for p in ("/dev", "/proc", "/sys"))
        assert not ops["/tmp"].create and ops["/etc/hosts"].optional


def test_private_tmp_is_a_tmpfs_else_host_tmpdir():
    assert dsts(fs.plan(launch(private_tmp=True)), fs.Tmpfs) == ["/tmp"]
    tmp = [op for op in fs.plan(launch(host_tmp="/scratch")) if op.dst == "/tmp"]
    assert tmp == [fs.Bind("/scratch", "/tmp")]


def test_home_binds_host_home_at_home_user():
    ops = fs.plan(launch(home="/u/alice", write_fake="12%"))
    assert fs.Bind("/u/alice", "/home/alice", create=True) in ops


def test_no_passwd_leaves_etc_passwd_alone():
    assert dsts(fs.plan(launch(generate_passwd=False)), fs.File) == []


def test_passwd_has_root_nobody_and_the_user_with_home_slash():
    text = fs.passwd_text(ALICE)
    assert text.splitlines() == ["root:x:0:0:root:/root:/bin/sh",
                                 "nobody:x:65534:65534:nobody:/:/bin/false",
                                 "alice:x:1000:1000:Alice A.:/:/bin/sh"]


def test_unknown_uid_is_charlie_and_group_charliegroup():
    nobody_knows = Identity(4242, 4343, 0, 0, "root", (), "")
    assert "charlie:x:4242:4343:Charlie:/:/bin/sh" in fs.passwd_text(nobody_knows)
    assert fs.group_text(nobody_knows).splitlines()[-1] == "charliegroup:x:4343:"


def test_root_user_is_not_listed_twice():
    root = Identity(0, 0, 0, 0, "root", ("root", "root"), "root")
    assert [line.split(":")[0] for line in fs.passwd_text(root).splitlines()] == ["nobody", "root"]
    assert fs.group_text(root).splitlines() == ["nogroup:x:65534:", "root:x:0:"]


def test_resolve_follows_absolute_links_inside_the_root(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to("/run")
    assert fs.resolve(str(tmp_path), "/var/run/x") == f"{tmp_path}/run/x"


def test_resolve_refuses_dotdot_out_of_the_root(tmp_path):
    (tmp_path / "escape").symlink_to("../../../../etc")
    with pytest.raises(Fatal, match="outside the image"):
        fs.resolve(str(tmp_path), "/escape/x")


def test_resolve_refuses_symlink_loops(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(Fatal, match="too many symlinks"):
        fs.resolve(str(tmp_path), "/loop")


def test_each_bind_of_one_source_is_its_own_operation():
    ops = fs.plan(launch(binds=(BindSpec("/dev", "/mnt/0"), BindSpec("/etc", "/mnt/1"),
                                BindSpec("/etc", "/mnt/2"))))
    assert [op.dst for op in ops if isinstance(op, fs.Bind) and op.src in ("/dev", "/etc")] == \
        ["/dev", "/mnt/0", "/mnt/1", "/mnt/2"]


def host_launch(**kw):
    return Launch(image="/", image_ref="/", command=("true",), identity=ALICE, environ={},
                  generate_passwd=False, **kw)


def test_host_root_as_image_has_only_the_users_mounts():
    ops = fs.plan(host_launch(binds=(BindSpec("/data", "/mnt"),), private_tmp=True))
    assert ops == [fs.Root(writable=False, overlay_size=None, host=True),
                   fs.Tmpfs("/tmp", "mode=1777"), fs.Bind("/data", "/mnt")]


def test_host_root_as_image_creates_destinations_only_with_write():
    ops = fs.plan(host_launch(write=True, binds=(BindSpec("/data", "/new"),)))
    assert ops[0].writable and ops[1] == fs.Bind("/data", "/new", create=True)
