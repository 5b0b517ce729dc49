"""Option parsing: argp's optional values, ch-run's integer and bind messages, env option order,
usage errors, --help, and where --timings goes."""

import os

import pytest

from chjoin import env
from chjoin.cli import (IMAGE_ENV, OPTIONS, Usage, env_ops, given_terms, help_text,
                        name_options, normalize, parse, parse_bind, parse_int, timings_target,
                        verbosity_of)
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


def test_options_are_taken_from_anywhere_before_the_double_dash_as_getopt_does():
    assert normalize(["img", "-v", "--", "ls", "-l"]) == ["--verbose", "img", "--", "ls", "-l"]
    assert normalize(["img", "ls", "-w", "--", "-l"]) == ["--write", "img", "ls", "--", "-l"]
    assert parse(normalize(["img", "ls", "-c", "/x", "--", "-l", "/"]))[1:] == (
        "img", ["ls", "-l", "/"])
    with pytest.raises(Usage, match="unknown option: -n "):
        parse(normalize(["img", "echo", "-n", "x"]))     # as ch-run: -n is no option of ours


def test_posixly_correct_ends_the_options_at_the_first_other_word():
    assert normalize(["-t", "img", "-v", "--", "true"], permute=False) == [
        "--private-tmp", "img", "--", "-v", "--", "true"]
    assert parse(normalize(["img", "-v", "x"], permute=False))[1:] == ("img", ["-v", "x"])
    # CMD word for word: only a `--` right after IMAGE is ours
    assert parse(normalize(["img", "echo", "--", "hi"], permute=False))[1:] == (
        "img", ["echo", "--", "hi"])
    assert parse(normalize(["img", "--", "echo", "hi"], permute=False))[1:] == (
        "img", ["echo", "hi"])
    assert parse(normalize(["--name=n", "img", "c"], permute=False))[1:] == ("img", ["c"])
    assert parse(normalize(["--name=n", "--", "c"], permute=False))[1:] == (None, ["c"])


@pytest.mark.parametrize("args", [
    ["-d", "vendor.com/dev=0", "img", "--", "x"], ["img", "-d", "vendor.com/dev=0", "--", "x"],
    ["img", "-d", "vendor.com/dev=0", "x"]])
def test_a_device_after_d_is_its_value_before_or_after_image(args):
    options, image, command = parse(normalize(args))
    assert (options["cdi"], image, command) == (["vendor.com/dev=0"], "img", ["x"])


def test_a_chjoin_option_never_makes_a_ch_run_abbreviation_ambiguous():
    assert normalize(["--join-t=T", "img"]) == ["--join-tag=T", "img"]   # not --join-timeout
    assert normalize(["--n", "img"]) == ["--no-passwd", "img"]          # not --name
    assert normalize(["--ti", "img"]) == ["--timings", "img"]


@pytest.mark.parametrize("given, long", [
    ("--verb", "--verbose"), ("--write", "--write"), ("--write-f=1g", "--write-fake=1g"),
    ("--join-c=2", "--join-ct=2"), ("--no-p", "--no-passwd"), ("--cd=/x", "--cd=/x")])
def test_a_long_option_may_be_abbreviated_to_any_unambiguous_prefix(given, long):
    assert normalize([given, "img", "--", "true"]) == [long, "img", "--", "true"]


def test_an_abbreviated_option_takes_its_value_from_the_next_word():
    assert normalize(["--bi", "/a:/b", "img"]) == ["--bind=/a:/b", "img"]


@pytest.mark.parametrize("given, possibilities", [
    ("--ver", "'--verbose' '--version'"), ("--join-", "'--join-ct' '--join-tag'"),
    ("--w", "'--warnings' '--write' '--write-fake'"), ("--wri", "'--write' '--write-fake'")])
def test_an_ambiguous_abbreviation_is_refused_with_getopts_words(given, possibilities):
    with pytest.raises(Usage, match=f"option '{given}' is ambiguous; possibilities: "):
        normalize([given, "img", "true"])
    with pytest.raises(Usage) as e:
        normalize([given, "img", "true"])
    assert set(str(e.value).split(": ")[1].split()) >= set(possibilities.split())


@pytest.mark.parametrize("args, message", [
    (["-u", "abc", "--help"], "--uid: no digits found"),        # before --help is done
    (["-u7x", "--uid=0", "img", "true"], "--uid: extra characters after digits"),
    (["-g", "99999999999"], "--gid: out of range"),             # before IMAGE is missed
    (["-b", ":/x"], "--bind: no source provided"),
    (["--join-ct=x"], "--join-ct: no digits found"),
    (["--join-pid="], "--join-pid: no digits found"),
    (["-m", ""], "mount point can't be empty string"),
    (["--unset-env=", "img", "true"], "non-zero length"),
    (["-vvvv"], "--verbose can be specified at most thrice"),
    (["-v", "-q", "--help"], "--quiet incompatible with --verbose"),
    (["img", "true", "-qqqq"], "--quiet can be specified at most thrice"),
])
def test_each_value_is_checked_as_its_option_is_met(args, message):
    with pytest.raises(Fatal, match=message):
        parse(normalize(args))


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


def test_env_options_keep_command_line_order_and_no_expand_applies_to_all():
    ops = env_ops(normalize(["--set-env=A=1", "--unset-env=B*", "--env-no-expand",
                             "--set-env=C=$A", "--set-env", "img"]))
    assert ops == (env.SetVars((("A", "1"),), False), env.Unset("B*"),
                   env.SetVars((("C", "$A"),), False), env.ImageFile("\n", False))
    ops = env_ops(normalize(["--set-env=A=$B", "img"]))
    assert ops == (env.SetVars((("A", "$B"),), True),)


def test_empty_env_option_is_refused():
    with pytest.raises(Fatal, match="non-zero length"):
        env_ops(["--unset-env="])


def test_verbose_and_quiet_exclude_each_other():
    with pytest.raises(Fatal, match="--quiet incompatible with --verbose"):
        verbosity_of(1, 1)
    assert verbosity_of(2, 0) == 2
    assert verbosity_of(0, 3) == -3


def test_parse_gives_each_kind_of_option_its_value():
    options, image, command = parse(normalize(
        ["-vv", "-b", "/a", "-b/b:/c", "-c", "/x", "-c/y", "--set-env", "-W", "-j", "img", "--",
         "ls", "-l"]))
    assert (image, command) == ("img", ["ls", "-l"])
    assert options["verbose"] == 2 and options["quiet"] == 0
    assert options["bind"] == ["/a", "/b:/c"]
    assert options["cd"] == "/y"
    assert options["set-env"] == [IMAGE_ENV]
    assert options["write-fake"] == ["12%"]
    assert options["join"] and not options["write"]
    assert options["uid"] is None


@pytest.mark.parametrize("args, image, command", [
    (["img", "true"], "img", ["true"]),
    (["img", "--", "--", "x"], "img", ["--", "x"]),
    (["--", "img", "--", "true"], "img", ["true"]),
    (["-v", "--", "-img-", "true"], "-img-", ["true"]),
])
def test_image_and_command_around_double_dashes(args, image, command):
    assert parse(normalize(args))[1:] == (image, command)


@pytest.mark.parametrize("args, message", [
    ([], "missing IMAGE"), (["-v", "--"], "missing IMAGE"),
    (["--nope", "img", "true"], "unknown option: --nope "),
    (["-Z", "img", "true"], "unknown option: -Z "),
    (["--cd"], "option --cd requires an argument"),
    (["--join=3", "img", "true"], "option --join takes no value"),
    (["--help=me"], "option --help takes no value"),
])
def test_usage_errors(args, message):
    with pytest.raises(Usage, match=message):
        parse(normalize(args))


def test_help_lists_every_option_in_argp_style():
    text = help_text()
    assert text.startswith("Usage: chjoin [OPTIONS] IMAGE -- CMD [ARG...]\n")
    for name, short, *_ in OPTIONS:
        assert f"--{name}" in text
        if short:
            assert f"-{short}, --{name}" in text
    assert "  -W, --write-fake[=SIZE]" in text and "12% of memory" in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize("flag, value, target", [
    (0, None, None), (0, "", None), (0, "0", None), (1, None, "stderr"), (0, "1", "stderr"),
    (0, "/tmp/t.json", "/tmp/t.json"), (1, "/tmp/t.json", "stderr")])
def test_timings_go_to_stderr_a_file_or_nowhere(flag, value, target):
    environ = {} if value is None else {"CHJOIN_TIMINGS": value}
    assert timings_target(flag, environ) == target


def test_relative_timings_file_is_made_absolute_before_the_container_changes_cwd():
    assert timings_target(0, {"CHJOIN_TIMINGS": "t.json"}) == os.path.join(os.getcwd(), "t.json")


@pytest.mark.parametrize("args, image, command", [
    (["--name=dev", "--", "make", "-j"], None, ["make", "-j"]),     # no IMAGE: enter it
    (["--name=dev", "--", "/img", "--", "make"], "/img", ["make"]),
    (["--name=dev", "/img", "--", "make"], "/img", ["make"]),
    (["--name=dev", "/img", "make"], "/img", ["make"]),
])
def test_a_named_launch_may_omit_the_image(args, image, command):
    _options, found, cmd = parse(normalize(args))
    assert (found, cmd) == (image, command)


def test_without_a_name_the_image_is_never_omitted():
    assert parse(normalize(["--", "make", "-j"]))[1:] == ("make", ["-j"])


def options_of(*args):
    return parse(normalize([*args, "/img", "true"]))[0]


@pytest.mark.parametrize("args, fields", [
    (["--name=dev"], {"name": "dev", "name_mode": "auto", "keep": 0.0}),
    (["--name=dev:exec"], {"name": "dev", "name_mode": "exec", "keep": 0.0}),
    (["--name=a:b:create", "--keep=90s"], {"name": "a:b", "name_mode": "create", "keep": 90.0}),
    (["--name=x", "--keep=2h"], {"name": "x", "name_mode": "auto", "keep": 7200.0}),
    (["--name=x", "--keep=1.5"], {"name": "x", "name_mode": "auto", "keep": 1.5}),
    ([], {}),
])
def test_name_options(args, fields):
    assert name_options(options_of(*args), "/img") == fields


@pytest.mark.parametrize("args, message", [
    (["--name=dev:run"], "--name: flag must be \"auto\", \"create\" or \"exec\", not 'run'"),
    (["--name=:exec"], "--name: not a name: ':exec'"),
    (["--name=a/b"], "--name: not a name: 'a/b'"),
    (["--keep=10m"], "--keep: only with --name"),
    (["--name=x", "--keep=0"], "--keep: must be a positive duration"),
    (["--name=x", "--keep=soon"], "--keep: must be a positive duration"),
    (["--name=x", "--join-pid=5"], "--name can't be combined with --join-pid"),
])
def test_bad_name_options_are_refused(args, message):
    with pytest.raises(Fatal, match=message.replace("(", r"\(").replace(")", r"\)")):
        name_options(options_of(*args), "/img")


def test_an_attach_compares_only_the_terms_its_options_set():
    assert given_terms(options_of(), None) == ()
    assert given_terms(options_of(), "/img") == ("image",)
    assert given_terms(options_of("-u", "0", "--home", "-t"), None) == (
        "uid:gid", "write mode", "mount options")
    assert given_terms(options_of("-W"), None) == ("write mode",)
