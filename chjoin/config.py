"""`Launch`: everything one launch needs, decided before any system call, frozen.

The command line builds it (`chjoin.cli`); everything below reads it. `join_terms()` is what
peers joining one container must agree on.
"""

from chjoin.value import Value

WRITE_FAKE_DEFAULT_SIZE = "12%"


class BindSpec(Value):
    """One `-b SRC[:DST]`: host SRC at guest DST."""
    src: str
    dst: str


class Identity(Value):
    """Who runs inside: container ids, and the host's passwd/group facts the container shows."""
    uid: int
    gid: int
    host_uid: int
    host_gid: int
    user_name: str           # $USER on the host: the name of /home/$USER under --home
    passwd_entry: tuple      # (name, gecos) of the container uid on the host, or () if unknown
    group_name: str          # the host's name of the container gid, or "" if unknown


class Launch(Value):
    image: str                       # the host path of the image directory, or SquashFS file
    image_ref: str                   # what the user typed, for messages
    command: tuple
    identity: Identity
    squash_mount: str | None = None  # a SquashFS image: its mount point (-m); None: a directory
    storage: str = ""                # the storage directory (-s, $CH_IMAGE_STORAGE, default)
    newroot: str = ""                # what ch-run's -v calls it: the image, or -m (or "(null)")
    unsafe: bool = False             # --unsafe
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
    devices: object = None           # -d: a `chjoin.cdi.Selection`, or None
    join: bool = False               # -j, or implied by --join-ct / --join-tag
    join_count: int | None = None    # --join-ct
    join_tag: str | None = None      # --join-tag
    join_pid: int | None = None      # --join-pid
    join_timeout: float = 30.0       # --join-timeout, $CHJOIN_JOIN_TIMEOUT
    fuse_single: bool = False        # --fuse-single: the SquashFS daemon single-threaded
    seccomp: bool = False            # --seccomp: root emulation, installed in each rank
    timings: str | None = None       # --timings, $CHJOIN_TIMINGS: "stderr", a file, or None
    name: str | None = None          # --name NAME: a named container (chjoin.named)
    name_mode: str = "auto"          # --name NAME:FLAG: "auto", "create" or "exec"
    keep: float = 0.0                # --keep: seconds after its last process exits (0: stopped)
    given: tuple = ()                # labels of the join terms the command line set (IMAGE...)
    environ: dict                    # the environment the launch reads

    def join_terms(self):
        """[(label, text)]: what makes two launches the same container. A peer whose terms differ
        from its group's is told which one, in these words. Environment options are not here:
        each peer applies its own."""
        ident = self.identity
        write = "-w" if self.write else f"-W {self.write_fake}" if self.write_fake else "read-only"
        mounts = [f"-b {b.src}:{b.dst}" for b in self.binds]
        mounts += ["--home"] * bool(self.home) + ["-t"] * self.private_tmp
        mounts += ["--no-passwd"] * (not self.generate_passwd)
        if self.devices is not None:      # the record holds four terms: CDI is a mount option
            mounts.append(f"-d {self.devices.terms}")
        return [("image", self.image), ("uid:gid", f"{ident.uid}:{ident.gid}"),
                ("write mode", write), ("mount options", " ".join(mounts) or "none")]
