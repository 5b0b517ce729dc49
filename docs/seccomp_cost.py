"""What --seccomp costs a rank's start-up: chjoin's own BPF program (build + install + self-test)
against the same filter made with libseccomp (dlopen, rules, load), each in a fresh forked
process (a filter can't be removed), with the imports each needs. `python3 docs/seccomp_cost.py
[N]` prints the medians in ms. Run on an idle machine; needs Debian's libseccomp2."""

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


def ours():
    from chjoin import libc, seccomp

    libc.no_new_privs()
    libc.seccomp_filter(seccomp.program())
    assert libc.fake_mknod_works()


class _Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64),
                ("b", ctypes.c_uint64)]


def libseccomp():
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
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
    lib.prctl(38, 1, 0, 0, 0)
    assert lib.seccomp_load(ctx) == 0
    assert ctypes.CDLL(None).mknodat(-101, b".", 0o20600, ctypes.c_uint64(0x103)) == 0


def measure(function, n):
    times = []
    for _ in range(n):
        r, w = os.pipe()
        if os.fork() == 0:
            t = time.perf_counter()
            function()
            os.write(w, repr(time.perf_counter() - t).encode())
            os._exit(0)
        os.close(w)
        times.append(float(os.read(r, 64)))
        os.close(r)
        os.wait()
    return statistics.median(times) * 1000, min(times) * 1000


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    import struct  # noqa: F401  (both pay for ctypes; chjoin's libc is loaded anyway)
    from chjoin import libc  # noqa: F401
    for name, function in (("chjoin BPF", ours), ("libseccomp", libseccomp)):
        median, best = measure(function, n)
        print(f"{name:12} median {median:.3f} ms  min {best:.3f} ms  (n={n})")
