"""What peers must agree on, as the shared record stores it: whole when it fits, else its start
and a digest of the whole, so that two different configurations never look the same."""

from chjoin.record import _TERM, stored_terms


def test_short_terms_are_stored_whole():
    assert stored_terms([("image", "/img"), ("uid:gid", "0:0")]) == ["image\0/img", "uid:gid\x000:0"]


def test_long_terms_fit_their_field_and_differ_when_only_their_ends_differ():
    a, b = (stored_terms([("mount options", "-b /x:/y " * 60 + end)])[0] for end in ("1", "2"))
    assert a != b
    assert a.startswith("mount options\0-b /x:/y ")
    assert len(a.encode()) <= _TERM.size and len(b.encode()) <= _TERM.size
