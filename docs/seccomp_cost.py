"""What --seccomp costs a rank's start-up: chjoin's own BPF program against the same filter
made with libseccomp through ctypes, each in a fresh interpreter (a filter can't be
removed), by phase: load (chjoin.seccomp's import / dlopen of libseccomp.so.2), build (the
precomputed program / the rules), install (no_new_privs + the filter / seccomp_load), self-test.
CPU time, so that a busy machine blurs it less. `python3 docs/seccomp_cost.py [N]`; needs
Debian's libseccomp2. Set SECCOMP_COST_INSTALLED=1 to measure the installed chjoin."""

import ctypes
import os
import statistics
import sys
import time

if "chjoin" not in sys.modules and not os.environ.get("SECCOMP_COST_INSTALLED"):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SYSCALLS = ("capset", "chown", "chown32", "fchown", "fchown32", "fchownat", "lchown",
            "lchown32", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
            "setgroups", "setgroups32", "setregid", "setregid32", "setresgid", "setresgid32",
            "setresuid", "setresuid32", "setreuid", "setreuid32", "setuid", "setuid32")
ARCHES = (0xC00000B7, 0x40000028, 0x40000003, 0xC0000015, 0x80000016, 0x4000003E)  # + x32


def ours(mark):
    from chjoin import libc, seccomp
    mark("load")
    program = seccomp.program()
    mark("build")
    libc.no_new_privs()
    libc.seccomp_filter(program)
    mark("install")
    assert libc.fake_mknod_works()
    mark("self-test")


class _Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64),
                ("b", ctypes.c_uint64)]


def libseccomp(mark):
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    mark("load")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_exact_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                                 ctypes.c_uint, ctypes.c_void_p]
    lib.seccomp_rule_add_array.argtypes = lib.seccomp_rule_add_exact_array.argtypes
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(0x7fff0000)                     # SCMP_ACT_ALLOW
    for arch in ARCHES:
        lib.seccomp_arch_add(ctx, arch)                    # EEXIST for the native one: fine
    fake = 0x00050000                                      # SCMP_ACT_ERRNO(0)
    for name in SYSCALLS:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr != -1:
            lib.seccomp_rule_add_array(ctx, fake, nr, 0, None)
    for name, arg in (("mknod", 1), ("mknodat", 2)):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        for kind in (0o020000, 0o060000):                  # SCMP_CMP_MASKED_EQ = 7
            cmp = _Cmp(arg, 7, 0o170000, kind)
            lib.seccomp_rule_add_array(ctx, fake, nr, 1, ctypes.byref(cmp))
    mark("build")
    lib.prctl(38, 1, 0, 0, 0)
    assert lib.seccomp_load(ctx) == 0
    mark("install")
    assert ctypes.CDLL(None).mknodat(-101, b".", 0o20600, ctypes.c_uint64(0x103)) == 0
    mark("self-test")


def measure(name, n):
    """Median CPU time (ms) of each phase of `name`'s function, in n fresh interpreters (as a
    rank pays it: chjoin.libc is loaded already, the rest is not)."""
    import subprocess

    runs = []
    for _ in range(n):
        out = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True,
                             text=True, check=True, env=os.environ).stdout
        runs.append([float(x) for x in out.split()])
    phases = [statistics.median(run[i] for run in runs) * 1000 for i in range(len(PHASES))]
    return phases, statistics.median(sum(run) for run in runs) * 1000


def child(name):
    import struct  # noqa: F401  (a rank has both loaded before --seccomp's part)
    from chjoin import libc  # noqa: F401
    marks = [time.process_time()]
    {"ours": ours, "libseccomp": libseccomp}[name](lambda p: marks.append(time.process_time()))
    print(" ".join(repr(b - a) for a, b in zip(marks, marks[1:])))


PHASES = ("load", "build", "install", "self-test")

if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2])
        sys.exit(0)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    for name in ("ours", "libseccomp"):
        phases, total = measure(name, n)
        label = "chjoin BPF" if name == "ours" else name
        print(f"{label:12} cpu ms, medians of n={n}: total {total:.3f}  " +
              "  ".join(f"{p} {ms:.3f}" for p, ms in zip(PHASES, phases)))
