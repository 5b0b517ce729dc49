"""Image kinds: which directory a reference names, found the way ch-run finds it.

A name in the storage directory (`$storage/img/NAME`, `/` spelled `%` and `:` spelled `+`) wins;
else a directory; else a file with the SquashFS magic; else the reference is no image. A
directory that is the host's own root (`/`) is an image too, as in ch-run 0.45: the launch then
runs on the host's tree (`fs.plan` knows what that means).
"""

import os
import stat

from chjoin.log import EXIT_SQUASH, Fatal
from chjoin.value import Value

SQUASHFS_MAGIC = b"hsqs"


class Image(Value):
    path: str        # absolute host path of the image's root directory
    by_name: bool    # found in the storage directory


def default_storage(environ, user_name):
    """`$CH_IMAGE_STORAGE`, else /var/tmp/$USER.ch, as ch-image and ch-run agree (`user_name`:
    $USER, or the host's name for us when it is unset)."""
    return environ.get("CH_IMAGE_STORAGE") or f"/var/tmp/{user_name}.ch"


def storage_name(ref):
    """The directory name under `$storage/img/` of image reference `ref`."""
    return ref.replace("/", "%").replace(":", "+")


def find(ref, storage, unsafe=False, warn=None):
    """The image that `ref` names, or a `Fatal` saying why it names none. `unsafe` (--unsafe)
    allows a directory inside the storage directory; `warn(message)`, when given, is told that
    a storage directory that does not exist was searched for a name that is no path either."""
    if not ref:
        raise Fatal("can't find image: empty name")
    named = os.path.join(storage, "img", storage_name(ref))
    if os.path.isdir(named):
        return Image(os.path.realpath(named), by_name=True)
    try:
        is_dir = stat.S_ISDIR(os.stat(ref).st_mode)
    except OSError as e:
        if warn is not None and not os.path.exists(storage):
            warn(f"storage directory not found: {storage}")
        raise Fatal(f"can't stat: {ref}: {e.strerror}") from None
    if is_dir:
        path = os.path.realpath(ref)
        storage_img = os.path.realpath(os.path.join(storage, "img"))
        if path.startswith(storage_img + "/") and not unsafe:
            raise Fatal(f"can't run directory images from storage (hint: run by name): {ref}")
        return Image(path, by_name=False)
    try:
        with open(ref, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise Fatal(f"can't open: {ref}: {e.strerror}") from None
    if magic == SQUASHFS_MAGIC:
        raise Fatal(f"can't run SquashFS image {ref}: this chjoin runs directory images only",
                    EXIT_SQUASH)
    raise Fatal(f"unknown image type: {ref}")
