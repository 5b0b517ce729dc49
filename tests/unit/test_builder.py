"""The SPANK builder's pure parts: --chjoin-args split as a shell splits words, what it refuses,
and the wire format of the environment operations."""

import shlex

import pytest

from chjoin import builder
from chjoin.cli import Usage
from chjoin.log import Fatal


@pytest.mark.parametrize("text", [
    "", "  ", "-b /a:/b -W", "-b '/with space':/x", '--set-env="A=1 2"', r"-b /a\ b:/c",
    "--unset-env='!(PATH|HOME)'", '--set-env="Q=\\"x\\""', "-c /tmp --set-env=B=$HOME",
    "a''b \"\" ''", "--set-env=X='y'",
])
def test_args_split_as_a_shell_does(text):
    assert builder.split(text) == shlex.split(text)


@pytest.mark.parametrize("text", ["-b 'open", '--set-env="A=1'])
def test_an_unclosed_quote_is_a_usage_error(text):
    with pytest.raises(Usage, match="unclosed"):
        builder.split(text)


@pytest.mark.parametrize("args, message", [
    ("--join", "--join: the plugin already shares"),
    ("-j", "--join: the plugin already shares"),
    ("-wj", "--join: the plugin already shares"),
    ("--join-ct=3", "--join-ct:"),
    ("--join-tag=x", "--join-tag:"),
    ("--join-pid=1", "--join-pid:"),
    ("--join-timeout=4", "--join-timeout:"),
    ("--help", "--help is no container option"),
    ("-V", "--version is no container option"),
    ("--feature=extglob", "--feature is no container option"),
    ("--seccomp", "--seccomp: not under the SPANK plugin"),
    ("-W --seccomp", "--seccomp: not under the SPANK plugin"),
    ("--usage", "--usage is no container option"),
    ("--warnings=2", "--warnings is no container option"),
    ("--test=log", "--test is no container option"),
    ("-b /x stray", "not an option: stray"),
    ("/other", "not an option: /other"),
    ("--frobnicate", "unknown option: --frobnicate"),
    ("-b", "option --bind requires an argument"),           # it would take IMAGE
    ("-v --join-tag", "option --join-tag requires an argument"),
])
def test_what_is_no_container_option_is_refused(args, message):
    with pytest.raises(Usage, match=message.replace("(", r"\(")):
        builder.parse("/img", args)


def test_a_value_option_last_is_refused_without_an_image_too():
    with pytest.raises(Usage, match="option --uid requires an argument"):
        builder.parse("", "-u", "name")                       # it would take the `--`


def test_a_device_is_d_s_value_with_a_name_and_no_image():
    options, _tokens = builder.parse("", "-d vendor.com/dev=0", "name")
    assert options["cdi"] == ["vendor.com/dev=0"] and options["name"] == "name"


def test_container_options_parse_as_chjoin_parses_them():
    options, tokens = builder.parse("/img", "-b /a:/b -W -c /tmp --set-env=A=1 -u 0")
    assert options["bind"] == ["/a:/b"] and options["cd"] == "/tmp" and options["uid"] == "0"
    assert tokens[-3:] == ["/img", "--", "true"]


def test_operations_are_nul_terminated_fields_after_their_length():
    data = builder.encode([("S", "A", "1"), ("U", "B*"), ("P",), ("R",)])
    head, _, body = data.partition(b"\n")
    assert int(head) == len(body)
    assert body == b"S\0A\0001\0U\0B*\0P\0R\0"


@pytest.mark.parametrize("record", [("S", "A", "x\0S\0EVIL\0y"), ("X", "A\0B", "1"), ("U", "A\0")])
def test_a_nul_inside_a_field_fails_the_build_rather_than_shift_the_records(record):
    with pytest.raises(Fatal, match="NUL byte"):
        builder.encode([record, ("R",)])


def test_operations_over_the_plugins_maximum_fail_the_build():
    with pytest.raises(Fatal, match="over the SPANK plugin's 4194304"):
        builder.encode([("S", "BIG", "x" * (4 << 20)), ("R",)])
