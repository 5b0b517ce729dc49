"""`Launch`: everything one launch needs, decided before any system call, frozen.

The command line builds it (`chjoin.cli`); everything below reads it. `fingerprint()` is the part
that peers joining one container must agree on.
"""

from dataclasses import dataclass, field

WRITE_FAKE_DEFAULT_SIZE = "12%"


@dataclass(frozen=True)
class BindSpec:
    """One `-b SRC[:DST]`: host SRC at guest DST."""
    src: str
    dst: str


@dataclass(frozen=True)
class Identity:
    """Who runs inside: container ids, and the host's passwd/group facts the container shows."""
    uid: int
    gid: int
    host_uid: int
    host_gid: int
    user_name: str           # $USER on the host: the name of /home/$USER under --home
    passwd_entry: tuple      # (name, gecos) of the container uid on the host, or () if unknown
    group_name: str          # the host's name of the container gid, or "" if unknown


@dataclass(frozen=True)
class Launch:
    image: str                       # the host path of the image directory
    image_ref: str                   # what the user typed, for messages
    command: tuple
    identity: Identity
    binds: tuple = ()
    cd: str | None = None
    write: bool = False
    write_fake: str | None = None    # tmpfs size for -W, e.g. "12%"
    home: str | None = None          # host $HOME under --home
    private_tmp: bool = False
    host_tmp: str = "/tmp"
    generate_passwd: bool = True
    env_ops: tuple = ()
    verbosity: int = 0
    environ: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def fingerprint(self):
        """A short digest of what makes two launches the same container."""
        import hashlib  # only joins need it: keep it off the single-launch path

        ident = self.identity
        parts = [self.image, str(ident.uid), str(ident.gid), str(self.write),
                 str(self.write_fake), str(self.home), str(self.private_tmp),
                 str(self.generate_passwd)]
        parts += [f"{b.src}:{b.dst}" for b in self.binds]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
