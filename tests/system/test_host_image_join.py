"""--join with the host's root as image (ch-run 0.45's `ch-run / -- CMD`): the winner builds the
namespaces on the host's tree, the peers enter them, and they all share one read-only root."""

import os

SHOW = ["--", "sh", "-c",
        "echo $(readlink /proc/self/ns/user) $(readlink /proc/self/ns/mnt); "
        "touch /etc/chjoin-host-image-join 2>&1 | grep -c 'Read-only file system'"]


def test_ranks_with_the_host_root_as_image_share_one_container(as_user):
    try:
        group = as_user.group(["--join-ct=3", "--join-tag=hostroot", "/", *SHOW], [{}] * 3)
    finally:    # a root that was not read-only would have let this one through, on the host
        if os.path.exists("/etc/chjoin-host-image-join"):
            os.unlink("/etc/chjoin-host-image-join")
    assert group.returncodes == [0] * 3, [r.stderr for r in group.ranks]
    outputs = {r.stdout for r in group.ranks}
    assert len(outputs) == 1, outputs
    namespaces, read_only = outputs.pop().splitlines()
    assert os.readlink("/proc/self/ns/mnt") not in namespaces
    assert read_only == "1"
    assert not any("image is the host's root (/)" in r.stderr for r in group.ranks)  # -v only
    assert group.lingering == []
    assert sorted(n for n in os.listdir("/dev/shm")
                  if n.startswith(("chjoin-", "sem.chjoin-")) and f"-{as_user.uid}-" in n
                  and "hostroot" in n) == []
