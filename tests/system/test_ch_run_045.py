"""What chjoin does as ch-run 0.45 does, where it once did not (issue 12): binds of one source
at several places, PWD, a lone `$` in --set-env, the -q levels, the host's root as image, the
warnings, --unsafe, and ch-run's -v and -vv lines. Each test runs as root and as the test user.
"""



def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def environment(out):
    return dict(line.split("=", 1) for line in out.splitlines())


# 1. A source bound at several destinations is mounted at each.

def test_a_source_bound_twice_is_mounted_at_both_destinations(as_user, image, host_dir):
    out = ok(as_user.run("-b", f"{host_dir}:/mnt", "-b", f"{host_dir}:/opt", image, "--",
                         "cat", "/mnt/file", "/opt/file"))
    assert out == "from the host\n" * 2


def test_a_bind_of_a_default_source_keeps_the_default(as_user, image):
    out = ok(as_user.run("-b", "/dev:/mnt", image, "--", "sh", "-c",
                         "ls /dev/null /mnt/null"))
    assert out == "/dev/null\n/mnt/null\n"
