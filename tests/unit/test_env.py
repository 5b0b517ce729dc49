"""The environment rules, as pure functions."""

import pytest

from chjoin import env
from chjoin.log import Fatal


def test_home_is_root_dir_when_image_has_it_else_slash():
    assert env.initial({}, image_has_root=True)["HOME"] == "/root"
    assert env.initial({}, image_has_root=False)["HOME"] == "/"
    assert env.initial({}, home="/home/alice", image_has_root=True)["HOME"] == "/home/alice"


def test_path_gets_bin_appended_unless_present():
    assert env.initial({"PATH": "/usr/bin"})["PATH"] == "/usr/bin:/bin"
    assert env.initial({"PATH": "/bin:/usr/bin"})["PATH"] == "/bin:/usr/bin"
    assert env.initial({"PATH": "/usr/bin:/bin"})["PATH"] == "/usr/bin:/bin"


def test_tmpdir_is_unset():
    assert "TMPDIR" not in env.initial({"TMPDIR": "/scratch"})


def test_ch_running_is_set_last():
    result = env.build({}, [env.SetVars((("CH_RUNNING", "no"),), True)])
    assert result["CH_RUNNING"] == "Weird Al Yankovic"


def test_file_format_skips_blank_lines_and_strips_single_quotes():
    text = "A=1\n\nB='two words'\nC=it's\nD=\n"
    assert env.parse_file(text, "\n", "f") == (("A", "1"), ("B", "two words"), ("C", "it's"),
                                              ("D", ""))


def test_nul_separated_file_keeps_newlines_in_values():
    assert env.parse_file("A=line1\nline2\0B=2\0", "\0", "f") == (("A", "line1\nline2"), ("B", "2"))


@pytest.mark.parametrize("line, message", [("NOEQUALS", "no delimiter: f:1"),
                                           ("=value", "empty name: f:1"),
                                           ("A=1\nB=x\0S\0EVIL\0y", "NUL byte: f:2"),
                                           ("A\0B=1", "NUL byte: f:1")])
def test_bad_lines_name_file_and_line(line, message):
    with pytest.raises(Fatal, match=message):
        env.parse_file(line, "\n", "f")


def test_expansion_of_colon_items_drops_empty_ones():
    environ = {"A": "/a", "EMPTY": ""}
    assert env.expand("$A:/b:$EMPTY:$UNSET", environ) == "/a:/b"
    assert env.expand("plain", environ) == "plain"


def test_operations_apply_in_order_with_expansion_per_option():
    ops = [env.SetVars((("X", "1"),), True), env.SetVars((("Y", "$X:2"),), True),
           env.SetVars((("Z", "$X"),), False), env.Unset("X")]
    result = env.build({}, ops)
    assert (result["Y"], result["Z"], "X" in result) == ("1:2", "$X", False)


def test_image_file_is_read_through_the_reader():
    def reader(path, delimiter):
        assert path == "/ch/environment"
        return (("FROM_IMAGE", "yes"),)
    assert env.build({}, [env.ImageFile("\n", True)], read=reader)["FROM_IMAGE"] == "yes"


@pytest.mark.parametrize("pattern, name, matches", [
    ("FOO*", "FOOBAR", True), ("FOO*", "BARFOO", False), ("?OO", "FOO", True),
    ("[AB]X", "BX", True), ("[!AB]X", "BX", False), ("[a-c]", "b", True),
    ("!(HOME|PATH)", "HOME", False), ("!(HOME|PATH)", "USER", True),
    ("!(HOME|PATH)", "HOMER", True), ("@(A|B)C", "BC", True), ("?(X)Y", "Y", True),
    ("+(AB)", "ABAB", True), ("+(AB)", "", False), ("*(AB)", "", True),
    ("SLURM_!(JOB_ID)", "SLURM_NTASKS", True), ("SLURM_!(JOB_ID)", "SLURM_JOB_ID", False),
    ("*", "ANY", True)])
def test_glob_match_with_extglob(pattern, name, matches):
    assert env.glob_match(pattern, name) is matches


def test_unbalanced_extglob_is_an_error():
    with pytest.raises(Fatal, match="unbalanced"):
        env.glob_match("!(A|B", "A")


def test_a_dollar_with_no_name_is_kept():
    assert env.expand("bar:$", {}) == "bar:$"
    assert env.expand("$:bar", {"": "never"}) == "$:bar"
    assert env.expand("$", {}) == "$"


def test_build_lists_the_variables_each_option_set_in_order():
    ops = [env.SetVars((("A", "1"), ("B", "$A:2")), True), env.Unset("A"),
           env.SetVars((("A", "3"),), False)]
    assert env.build({}, ops).assigned == [("A", "1"), ("B", "1:2"), ("A", "3")]
