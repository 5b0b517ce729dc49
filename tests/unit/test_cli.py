"""Option parsing: argp's optional values, ch-run's integer and bind messages, env option order."""

import pytest

from chjoin import env
from chjoin.cli import IMAGE_ENV, env_ops, normalize, parse_bind, parse_int, verbosity_of
from chjoin.config import BindSpec
from chjoin.log import Fatal


def test_short_options_with_values_become_long_form():
    assert normalize(["-b", "/a:/b", "-c/x", "img", "--", "ls"]) == [
        "--bind=/a:/b", "--cd=/x", "img", "--", "ls"]


def test_bare_write_fake_takes_no_value_from_the_next_argument():
    assert normalize(["-W", "img", "--", "true"]) == ["--write-fake=12%", "img", "--", "true"]
    assert normalize(["--write-fake", "img", "true"]) == ["--write-fake=12%", "img", "true"]


def test_write_fake_size_must_be_attached():
    assert normalize(["-W1g", "img"]) == ["--write-fake=1g", "img"]
    assert normalize(["--write-fake=50%", "img"]) == ["--write-fake=50%", "img"]


def test_bare_set_env_means_the_image_file():
    assert normalize(["--set-env", "img", "true"]) == [f"--set-env={IMAGE_ENV}", "img", "true"]


def test_clustered_short_flags_are_split():
    assert normalize(["-tvw", "img", "--", "x"]) == [
        "--private-tmp", "--verbose", "--write", "img", "--", "x"]


def test_options_after_image_belong_to_the_command():
    assert normalize(["img", "-v", "--", "ls", "-l"]) == ["img", "-v", "--", "ls", "-l"]


@pytest.mark.parametrize("text, message", [
    ("", "no digits found"), ("abc", "no digits found"), ("12x", "extra characters after digits"),
    ("99999999999", "out of range")])
def test_bad_integers_get_ch_run_messages(text, message):
    with pytest.raises(Fatal, match=f"--uid: {message}"):
        parse_int(text, "--uid")


def test_integers_parse():
    assert parse_int("1000", "--uid") == 1000


@pytest.mark.parametrize("text, message", [
    ("", "no source provided"), (":/x", "no source provided"), ("/a:", "no destination provided"),
    ("/a:/", "destination can't be /"), ("/a:rel", "destination must be absolute"),
    ("rel", "destination must be absolute")])
def test_bad_binds_are_refused(text, message):
    with pytest.raises(Fatal, match=message):
        parse_bind(text)


def test_bind_destination_defaults_to_source():
    assert parse_bind("/data") == BindSpec("/data", "/data")
    assert parse_bind("/data:/mnt") == BindSpec("/data", "/mnt")


def test_env_options_keep_command_line_order_and_expansion_switch():
    ops = env_ops(normalize(["--set-env=A=1", "--unset-env=B*", "--env-no-expand",
                             "--set-env=C=$A", "--set-env", "img"]))
    assert ops == (env.SetVars((("A", "1"),), True), env.Unset("B*"),
                   env.SetVars((("C", "$A"),), False), env.ImageFile("\n", False))


def test_empty_env_option_is_refused():
    with pytest.raises(Fatal, match="non-zero length"):
        env_ops(["--unset-env="])


def test_verbose_and_quiet_exclude_each_other():
    with pytest.raises(Fatal, match="--quiet incompatible with --verbose"):
        verbosity_of(1, 1)
    assert verbosity_of(2, 0) == 2
    assert verbosity_of(0, 3) == -3
