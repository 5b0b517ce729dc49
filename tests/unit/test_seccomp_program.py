"""The --seccomp filter program, run through a small classic-BPF interpreter
(`chjoin.seccomp.run`) for every architecture ch-run 0.45 covers: what it fakes, what it lets
through, x32 on x86-64, and the mode argument's word on big-endian s390x."""

import struct

import pytest

from chjoin import seccomp

PROGRAM = seccomp.instructions()
FAKE, ALLOW = seccomp.RET_FAKE, seccomp.RET_ALLOW
ARCH = {name: audit for name, audit, *_ in seccomp.ARCHES}
CHR, BLK, FIFO, REG = 0o020600, 0o060600, 0o010600, 0o100600


def verdict(arch, nr, *args):
    return seccomp.run(PROGRAM, ARCH[arch], nr, args)


def test_the_program_is_about_150_instructions_and_its_bytes_are_sock_filters():
    assert 140 <= len(PROGRAM) <= 160
    data = seccomp.program()
    assert len(data) == 8 * len(PROGRAM)
    assert struct.unpack_from("=HBBI", data, 0) == PROGRAM[0]


@pytest.mark.parametrize("arch", ARCH)
def test_every_listed_syscall_of_every_architecture_is_faked(arch):
    numbers = dict(zip(seccomp.FAKED, next(a[3] for a in seccomp.ARCHES if a[0] == arch)))
    faked = [name for name, nr in numbers.items() if nr is not None]
    assert faked and all(verdict(arch, numbers[name]) == FAKE for name in faked)


@pytest.mark.parametrize("arch", ARCH)
def test_other_syscalls_go_to_the_kernel(arch):
    listed = {nr for a in seccomp.ARCHES if a[0] == arch for nr in (*a[3], a[4], a[5])}
    others = [nr for nr in range(0, 450) if nr not in listed]
    assert all(verdict(arch, nr) == ALLOW for nr in others)


def test_x86_64_numbers_mean_nothing_under_another_architecture():
    assert verdict("x86_64", 92) == FAKE                    # chown
    assert verdict("aarch64", 92) == ALLOW                  # aarch64's 92 is personality
    assert seccomp.run(PROGRAM, 0xC00000F3, 92, ()) == ALLOW   # riscv64: not listed, allowed


def test_x32_syscalls_on_x86_64_are_faked_too():
    x32 = seccomp.X32_SYSCALL_BIT
    assert verdict("x86_64", x32 | 92) == FAKE              # x32 chown
    assert verdict("x86_64", x32 | 116) == FAKE             # x32 setgroups
    assert verdict("x86_64", x32 | 133, 0, CHR) == FAKE     # x32 mknod of a device
    assert verdict("x86_64", x32 | 133, 0, FIFO) == ALLOW
    assert verdict("x86_64", x32 | 0) == ALLOW              # x32 read


@pytest.mark.parametrize("arch", [a for a in ARCH if a != "aarch64"])   # aarch64: no mknod
@pytest.mark.parametrize("mode,expected", [(CHR, FAKE), (BLK, FAKE), (FIFO, ALLOW),
                                           (REG, ALLOW), (0o140600, ALLOW)])
def test_mknod_is_faked_only_for_devices(arch, mode, expected):
    mknod = next(a[4] for a in seccomp.ARCHES if a[0] == arch)
    assert verdict(arch, mknod, 0, mode, 0x103) == expected


@pytest.mark.parametrize("arch", ARCH)
@pytest.mark.parametrize("mode,expected", [(CHR, FAKE), (BLK, FAKE), (FIFO, ALLOW),
                                           (REG, ALLOW)])
def test_mknodat_is_faked_only_for_devices(arch, mode, expected):
    mknodat = next(a[5] for a in seccomp.ARCHES if a[0] == arch)
    assert verdict(arch, mknodat, -100 & 0xFFFFFFFFFFFFFFFF, 0, mode, 0x103) == expected


def test_big_endian_s390x_reads_the_low_word_of_the_mode():
    # the interpreter lays seccomp_data out big-endian for s390x: the low word is at +4
    assert seccomp.mode_offset(1, True) == 28 and seccomp.mode_offset(1, False) == 24
    assert verdict("s390x", 14, 0, CHR) == FAKE
    assert verdict("s390x", 290, 0, 0, BLK) == FAKE
    assert verdict("s390x", 290, 0, 0, FIFO) == ALLOW
    # a high word that looks like a device does not fool it
    assert verdict("s390x", 14, 0, CHR << 32) == ALLOW


def test_every_jump_is_forward_and_within_reach():
    for pc, (code, jt, jf, k) in enumerate(PROGRAM):
        if code == 0x15:
            assert 0 <= jt <= 255 and 0 <= jf <= 255
            assert pc + 1 + max(jt, jf) < len(PROGRAM)
        if code == 0x05:
            assert pc + 1 + k < len(PROGRAM)
    assert PROGRAM[-1] == (0x06, 0, 0, FAKE)


def test_the_precomputed_program_is_the_one_the_table_builds():
    assert seccomp.program() == seccomp.build()


def in_child(function):
    """Run `function` in a forked child (a filter can't be removed): its result, or its
    exception's text."""
    import os
    import pickle

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            result = ("ok", function())
        except BaseException as e:
            result = (type(e).__name__, str(e), getattr(e, "code", None))
        os.write(w, pickle.dumps(result))
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return pickle.loads(data)


def test_the_installed_filter_fakes_and_passes_the_self_test():
    from chjoin import libc, launch
    from chjoin.log import Log

    def run():
        launch.install_seccomp(seccomp.program(), libc, Log())
        import os
        os.setgroups([])                      # faked: no EPERM
        return libc.fake_mknod_works()
    assert in_child(run) == ("ok", True)


def test_a_filter_that_fakes_nothing_fails_the_self_test_with_ch_runs_line():
    """The self-test is real: a program built for no architecture (every call passes, as on a
    machine the table does not cover) makes it fail with ch-run 0.45's line and exit 31."""
    from chjoin import libc, launch
    from chjoin.log import Log

    result = in_child(lambda: launch.install_seccomp(seccomp.build(()), libc, Log()))
    assert result == ("Fatal", "seccomp root emulation failed (is your architecture "
                      "supported?)", 31)
