"""`--seccomp`: ch-run 0.45's root emulation, a classic BPF program that makes the system calls
a package manager needs as root succeed without doing anything.

Pure: `program()` returns the filter as bytes (an array of `struct sock_filter`); `launch`
installs it (`libc.seccomp_filter`) right before exec, in every rank, and checks it with
`libc.fake_mknod_works()`. Loaded only with `--seccomp`.

The filter (CDI-SECCOMP-NAMED.md §2): capset, the chown family and the set*id family, setgroups,
and mknod/mknodat of a character or block device return 0 without effect; everything else, and
every architecture not listed, goes to the kernel. Per architecture, in ch-run's order, one block:

    LD arch; JEQ AUDIT_ARCH_A else next block; LD nr; [x86-64: AND ~__X32_SYSCALL_BIT]
    JEQ nr -> FAKE (one per syscall); JEQ mknod -> MKNOD_E; JEQ mknodat -> MKNODAT_E; JA ALLOW

then `ALLOW: RET ALLOW`, the mknod handlers, which load the low word of the mode argument, mask
S_IFMT and fake S_IFCHR/S_IFBLK only, and last (BPF jumps only forward) `FAKE: RET ERRNO|0`.
Where ch-run differs, we fix:

- **x32.** An x32 process on x86-64 reports AUDIT_ARCH_X86_64 with `nr | __X32_SYSCALL_BIT`
  (0x40000000); every syscall faked here is a "common" one, whose x32 number is exactly that
  (asm/unistd_x32.h: `__NR_chown (__X32_SYSCALL_BIT + 92)`, ...), so the x86-64 block masks the
  bit off before comparing. ch-run lets them through.
- **Big-endian.** `seccomp_data.args[i]` is a u64 in the kernel's byte order at offset 16 + 8i:
  its low word, where a 32-bit mode lies, is at +0 on little-endian and +4 on big-endian. The
  byte order follows the architecture the block matched, never the host's: s390x (the only
  big-endian one of the six) has handlers of its own at +4. ch-run loads +0 there, the high
  word, so its device test never matches on s390x.
"""

import struct
import sys

# <linux/filter.h>
_LD_W_ABS = 0x20     # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15        # BPF_JMP | BPF_JEQ | BPF_K
_JA = 0x05           # BPF_JMP | BPF_JA
_AND_K = 0x54        # BPF_ALU | BPF_AND | BPF_K
_RET_K = 0x06        # BPF_RET | BPF_K

# <linux/seccomp.h>
RET_ALLOW = 0x7fff0000
RET_FAKE = 0x00050000        # SECCOMP_RET_ERRNO | 0: the call "returns 0"
_OFF_NR, _OFF_ARCH, _OFF_ARGS = 0, 4, 16

X32_SYSCALL_BIT = 0x40000000
S_IFMT, S_IFCHR, S_IFBLK = 0o170000, 0o020000, 0o060000

# The faked syscalls, in ch-run's row order; None: not on that architecture.
FAKED = ("capset", "chown", "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32",
         "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
         "setgroups32", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
         "setresuid32", "setreuid", "setreuid32", "setuid", "setuid32")
_ = None
# (name, AUDIT_ARCH_*, big-endian, numbers of FAKED, mknod, mknodat)
ARCHES = (
    ("aarch64", 0xC00000B7, False,
     (91, _, _, 55, _, 54, _, _, 152, _, 151, _, 144, _, 159, _, 143, _, 149, _, 147, _,
      145, _, 146, _), None, 33),
    ("arm", 0x40000028, False,
     (185, 182, 212, 95, 207, 325, 16, 198, 139, 216, 138, 215, 46, 214, 81, 206, 71, 204,
      170, 210, 164, 208, 70, 203, 23, 213), 14, 324),
    ("i386", 0x40000003, False,
     (185, 182, 212, 95, 207, 298, 16, 198, 139, 216, 138, 215, 46, 214, 81, 206, 71, 204,
      170, 210, 164, 208, 70, 203, 23, 213), 14, 297),
    ("ppc64le", 0xC0000015, False,
     (184, 181, _, 95, _, 289, 16, _, 139, _, 138, _, 46, _, 81, _, 71, _, 169, _, 164, _,
      70, _, 23, _), 14, 288),
    ("s390x", 0x80000016, True,
     (185, 212, _, 207, _, 291, 198, _, 216, _, 215, _, 214, _, 206, _, 204, _, 210, _, 208,
      _, 203, _, 213, _), 14, 290),
    ("x86_64", 0xC000003E, False,
     (126, 92, _, 93, _, 260, 94, _, 123, _, 122, _, 106, _, 116, _, 114, _, 119, _, 117, _,
      113, _, 105, _), 133, 259),
)
del _


def mode_offset(arg, big_endian):
    """Offset in `struct seccomp_data` of the low 32 bits of args[`arg`]."""
    return _OFF_ARGS + 8 * arg + (4 if big_endian else 0)


def instructions(arches=ARCHES):
    """The program as [(code, jt, jf, k)], jumps resolved (relative, as BPF counts them)."""
    # Pass 1: instructions with symbolic targets; pass 2: resolve them.
    prog = []
    labels = {}

    def emit(code, k=0, jt=None, jf=None):
        prog.append([code, jt, jf, k])

    for i, (name, audit, big, numbers, mknod, mknodat) in enumerate(arches):
        labels[f"arch{i}"] = len(prog)
        nxt = f"arch{i + 1}" if i + 1 < len(arches) else "ALLOW"
        emit(_LD_W_ABS, _OFF_ARCH)
        emit(_JEQ_K, audit, jt=None, jf=nxt)
        emit(_LD_W_ABS, _OFF_NR)
        if name == "x86_64":
            emit(_AND_K, ~X32_SYSCALL_BIT & 0xFFFFFFFF)
        for nr in numbers:
            if nr is not None:
                emit(_JEQ_K, nr, jt="FAKE")
        endian = "BE" if big else "LE"
        if mknod is not None:
            emit(_JEQ_K, mknod, jt=f"MKNOD_{endian}")
        if mknodat is not None:
            emit(_JEQ_K, mknodat, jt=f"MKNODAT_{endian}")
        emit(_JA, "ALLOW")
    labels["ALLOW"] = len(prog)
    emit(_RET_K, RET_ALLOW)
    endians = sorted({"BE" if a[2] else "LE" for a in arches})
    for endian in endians:
        big = endian == "BE"
        labels[f"MKNOD_{endian}"] = len(prog)
        emit(_LD_W_ABS, mode_offset(1, big))        # mknod(path, mode, dev)
        emit(_JA, "MODE")
        labels[f"MKNODAT_{endian}"] = len(prog)
        emit(_LD_W_ABS, mode_offset(2, big))        # mknodat(dirfd, path, mode, dev)
        if endian != endians[-1]:
            emit(_JA, "MODE")
    labels["MODE"] = len(prog)
    emit(_AND_K, S_IFMT)
    emit(_JEQ_K, S_IFCHR, jt="FAKE")
    emit(_JEQ_K, S_IFBLK, jt="FAKE")
    emit(_RET_K, RET_ALLOW)
    labels["FAKE"] = len(prog)       # last: BPF jumps only forward
    emit(_RET_K, RET_FAKE)
    out = []
    for pc, (code, jt, jf, k) in enumerate(prog):
        if code == _JA:
            k = labels[k] - pc - 1
            jt = jf = 0
        elif code == _JEQ_K:
            jt = 0 if jt is None else labels[jt] - pc - 1
            jf = 0 if jf is None else labels[jf] - pc - 1
            if not (0 <= jt <= 255 and 0 <= jf <= 255):
                raise AssertionError(f"seccomp: jump out of range at {pc}")
        else:
            jt = jf = 0
        out.append((code, jt, jf, k))
    return out


def program(arches=ARCHES):
    """The filter as the bytes of `struct sock_filter[]`, in the host's byte order."""
    if arches is ARCHES and sys.byteorder == "little":
        return _PROGRAM_LE
    return build(arches)


def build(arches=ARCHES):
    """`program()`, built from the table."""
    return b"".join(struct.pack("=HBBI", *insn) for insn in instructions(arches))


def run(insns, arch, nr, args=(0,) * 6):
    """Interpret the program for one system call (the unit tests' emulator): the SECCOMP_RET_*
    value. Only the instructions `instructions` emits; `seccomp_data` in `arch`'s byte order."""
    big = any(a[1] == arch and a[2] for a in ARCHES)
    args = tuple(args) + (0,) * (6 - len(args))
    data = struct.pack(">iIQ6Q" if big else "<iIQ6Q", nr, arch, 0, *args)
    acc = pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == _LD_W_ABS:
            acc = struct.unpack_from(">I" if big else "<I", data, k)[0]
        elif code == _AND_K:
            acc &= k
        elif code == _JEQ_K:
            pc += jt if acc == k else jf
        elif code == _JA:
            pc += k
        elif code == _RET_K:
            return k
        else:
            raise AssertionError(f"unknown instruction {code:#x}")


# `program()` on a little-endian host, precomputed (building it costs a rank 0.2 ms):
# `python -m chjoin.seccomp` prints it again; tests/unit/test_seccomp_program.py checks it.
_PROGRAM_LE = bytes.fromhex(
    "20000000040000001500000fb70000c02000000000000000150096005b000000150095003700000015009400"
    "36000000150093009800000015009200970000001500910090000000150090009f00000015008f008f000000"
    "15008e009500000015008d009300000015008c009100000015008b0092000000150085002100000005000000"
    "7d00000020000000040000001500001e28000040200000000000000015008500b900000015008400b6000000"
    "15008300d4000000150082005f00000015008100cf000000150080004501000015007f001000000015007e00"
    "c600000015007d008b00000015007c00d800000015007b008a00000015007a00d7000000150079002e000000"
    "15007800d6000000150077005100000015007600ce000000150075004700000015007400cc00000015007300"
    "aa00000015007200d200000015007100a400000015007000d000000015006f004600000015006e00cb000000"
    "15006d001700000015006c00d5000000150064000e0000001500650044010000050000005d00000020000000"
    "040000001500001e03000040200000000000000015006500b900000015006400b600000015006300d4000000"
    "150062005f00000015006100cf000000150060002a01000015005f001000000015005e00c600000015005d00"
    "8b00000015005c00d800000015005b008a00000015005a00d7000000150059002e00000015005800d6000000"
    "150057005100000015005600ce000000150055004700000015005400cc00000015005300aa00000015005200"
    "d200000015005100a400000015005000d000000015004f004600000015004e00cb00000015004d0017000000"
    "15004c00d5000000150044000e0000001500450029010000050000003d000000200000000400000015000012"
    "150000c0200000000000000015004500b800000015004400b5000000150043005f0000001500420021010000"
    "1500410010000000150040008b00000015003f008a00000015003e002e00000015003d005100000015003c00"
    "4700000015003b00a900000015003a00a400000015003900460000001500380017000000150030000e000000"
    "1500310020010000050000002900000020000000040000001500001216000080200000000000000015003100"
    "b900000015003000d400000015002f00cf00000015002e002301000015002d00c600000015002c00d8000000"
    "15002b00d700000015002a00d600000015002900ce00000015002800cc00000015002700d200000015002600"
    "d000000015002500cb00000015002400d5000000150018000e00000015001900220100000500000015000000"
    "2000000004000000150000133e0000c0200000000000000054000000ffffffbf15001c007e00000015001b00"
    "5c00000015001a005d0000001500190004010000150018005e000000150017007b000000150016007a000000"
    "150015006a000000150014007400000015001300720000001500120077000000150011007500000015001000"
    "7100000015000f0069000000150007008500000015000800030100000500000000000000060000000000ff7f"
    "200000001c000000050000000500000020000000240000000500000003000000200000001800000005000000"
    "0100000020000000200000005400000000f0000015000200002000001500010000600000060000000000ff7f"
    "0600000000000500")


if __name__ == "__main__":
    data = build().hex()
    print("\n".join(f'    "{data[i:i + 88]}"' for i in range(0, len(data), 88)) + ")")
