"""The pure parts of named containers: the scoped tag and what an attach is compared on."""

from chjoin import named, record
from chjoin.config import BindSpec, Identity, Launch
from chjoin.record import Group

IDS = Identity(1000, 1000, 1000, 1000, "u", (), "")


def test_a_name_is_the_jobs_under_slurm_and_the_users_outside_and_parses_back():
    assert named.scope_tag("dev", {"SLURM_JOB_ID": "42"}) == "name.42.dev"
    assert named.scope_tag("dev.x", {}) == "name..dev.x"
    assert named.parse_tag("name.42.dev") == ("42", "dev")
    assert named.parse_tag("name..1.5") == (None, "1.5")
    for other in ("slurm.42.0", "name.42", "name.j.x", "name..", "ppid.3"):
        assert named.parse_tag(other) is None


def container(**fields):
    launch = Launch(image="/img", image_ref="/img", command=("true",), identity=IDS,
                    write_fake="12%", binds=(BindSpec("/a", "/mnt"),), environ={}, **fields)
    return Group(0, 0.0, record.stored_terms(launch.join_terms()), [[1, record.INSIDE, 1]])


def attach(given, **fields):
    fields = {"image": "", "image_ref": None, "command": ("true",), "identity": IDS,
              "environ": {}, "given": given, **fields}
    return Launch(**fields)


def test_an_attach_is_compared_only_on_what_its_options_set():
    g = container()
    assert named.difference(g, attach(())) == ""
    assert named.difference(g, attach(("image",), image="/other")) == \
        "image /img, this rank /other"
    assert named.difference(g, attach(("write mode",), write=True)) == \
        "write mode -W 12%, this rank -w"
    assert named.difference(g, attach(("mount options",), binds=(BindSpec("/b", "/mnt"),))) \
        == "mount options -b /a:/mnt, this rank -b /b:/mnt"
    assert named.difference(g, attach(("mount options", "write mode"), write_fake="12%",
                                      binds=(BindSpec("/a", "/mnt"),))) == ""


class Later:
    """A launch of a later chjoin whose join terms hold one more (say, `-d`)."""
    given = ()

    def __init__(self, cdi):
        self.cdi = cdi

    def join_terms(self):
        return [("image", ""), ("cdi", self.cdi)]


def test_a_term_beyond_the_optional_ones_is_always_compared():
    g = container()
    g.terms.append("cdi\0nvidia.com/gpu")
    assert named.difference(g, Later("nvidia.com/gpu")) == ""
    assert named.difference(g, Later("none")) == "cdi nvidia.com/gpu, this rank none"
