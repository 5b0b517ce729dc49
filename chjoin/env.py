"""The container's environment: ch-run's rules, `--set-env`, `--unset-env`, `/ch/environment`.

Everything here is a pure function of values, except `read_file`, which reads one file. Host
files named by `--set-env` are read before the container is entered; the image's
`/ch/environment` is read inside it, when `build` meets an `ImageFile` operation.
"""

from chjoin.log import Fatal
from chjoin.value import Value

IMAGE_ENVIRONMENT = "/ch/environment"
CH_RUNNING = "Weird Al Yankovic"


class SetVars(Value):
    """Variables from `--set-env VAR=VAL` or a host file, already parsed."""
    pairs: tuple
    expand: bool


class ImageFile(Value):
    """`--set-env` with no argument: the image's /ch/environment, read inside the container."""
    delimiter: str
    expand: bool


class Unset(Value):
    """`--unset-env=GLOB`: remove every variable whose name matches the shell glob."""
    pattern: str


def parse_assignment(text, where):
    """Split one `NAME=VALUE` item; single quotes around the whole value are removed."""
    name, sep, value = text.partition("=")
    if not sep:
        raise Fatal(f"can't parse variable: no delimiter: {where}")
    if not name:
        raise Fatal(f"can't parse variable: empty name: {where}")
    if len(value) >= 2 and value[0] == value[-1] == "'":
        value = value[1:-1]
    return name, value


def parse_file(text, delimiter, path):
    """The assignments of a `--set-env` file: one per line (or per NUL), blank ones skipped. A
    NUL inside an assignment is refused: no environment can hold it (and the SPANK plugin's
    records are NUL-terminated)."""
    pairs = []
    for number, line in enumerate(text.split(delimiter), start=1):
        if "\0" in line:
            raise Fatal(f"can't parse variable: NUL byte: {path}:{number}")
        if line.strip():
            pairs.append(parse_assignment(line, f"{path}:{number}"))
    return tuple(pairs)


def read_file(path, delimiter):
    """Read and parse a `--set-env` file; a missing or unreadable file is a `Fatal`."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise Fatal(f"can't open: {path}: {e.strerror}") from None
    return parse_file(text, delimiter, path)


def expand(value, environ):
    """Expand `$NAME` items of a colon-separated value; items that expand to nothing are dropped.
    A `$` with no name after it is no variable: it stays, as in ch-run."""
    if "$" not in value:
        return value
    items = []
    for item in value.split(":"):
        if item.startswith("$") and len(item) > 1:
            item = environ.get(item[1:], "")
            if not item:
                continue
        items.append(item)
    return ":".join(items)


def initial(environ, home=None, image_has_root=False):
    """The environment before the user's changes: HOME, PATH with /bin, and no TMPDIR.

    `home` is `/home/$USER` under --home; otherwise HOME is /root when the image has it, else /.
    """
    env = dict(environ)
    env["HOME"] = home or ("/root" if image_has_root else "/")
    path = env.get("PATH")
    if path is not None and "/bin" not in path.split(":"):
        env["PATH"] = f"{path}:/bin"
    env.pop("TMPDIR", None)
    return env


class Environment(dict):
    """The command's environment, and `assigned`: the (name, value) pairs that `--set-env`
    options set, in order, for ch-run's `-vv` report."""

    def __init__(self, *args):
        super().__init__(*args)
        self.assigned = []


def build(environ, ops, home=None, image_has_root=False, read=read_file):
    """The command's environment: `initial`, then each operation in command-line order, then
    CH_RUNNING. `read(path, delimiter)` reads the image's environment file when asked for.
    (PWD comes last of all, where the working directory is set: `launch.exec_command`.)"""
    env = Environment(initial(environ, home, image_has_root))
    for op in ops:
        if isinstance(op, Unset):
            for name in [n for n in env if glob_match(op.pattern, n)]:
                del env[name]
            continue
        pairs = op.pairs if isinstance(op, SetVars) else read(IMAGE_ENVIRONMENT, op.delimiter)
        for name, value in pairs:
            env[name] = expand(value, env) if op.expand else value
            env.assigned.append((name, env[name]))
    env["CH_RUNNING"] = CH_RUNNING
    return env


# --- shell globs with bash's extglob ------------------------------------------------------------
#
# A pattern is parsed into a list of tokens: a literal character, "?", "*", a bracket class
# ("[", negated, text), or an extglob group (op, [alternatives as token lists]). Matching is a
# small backtracking search; names are short, so its cost does not matter.

_EXTGLOB_OPS = "?*+@!"


def glob_match(pattern, name):
    """True when `name` matches shell glob `pattern`, extglob included: ?(..) *(..) +(..) @(..) !(..)."""
    return _match(_parse(pattern, 0, top=True)[0], name, 0)


def _parse(pattern, i, top):
    """Parse from index i up to the end (top level) or up to the `|`/`)` closing a group."""
    tokens = []
    while i < len(pattern):
        c = pattern[i]
        if not top and c in "|)":
            return tokens, i
        if c in _EXTGLOB_OPS and pattern[i + 1:i + 2] == "(":
            alternatives, i = _parse_group(pattern, i + 2)
            tokens.append(("group", c, alternatives))
            continue
        if c == "[":
            end = _class_end(pattern, i)
            if end > 0:
                body = pattern[i + 1:end]
                negated = body[:1] in ("!", "^")
                tokens.append(("class", negated, body[1:] if negated else body))
                i = end + 1
                continue
        if c == "\\" and i + 1 < len(pattern):
            i += 1
            c = pattern[i]
            tokens.append(("char", c))
        elif c in "?*":
            tokens.append((c,))
        else:
            tokens.append(("char", c))
        i += 1
    if not top:
        raise Fatal(f"--unset-env: unbalanced parenthesis in pattern: {pattern}")
    return tokens, i


def _parse_group(pattern, i):
    alternatives = []
    while True:
        tokens, i = _parse(pattern, i, top=False)
        alternatives.append(tokens)
        if pattern[i] == ")":
            return alternatives, i + 1
        i += 1  # past "|"


def _class_end(pattern, i):
    """Index of the `]` closing the class opened at i, or -1 when there is none."""
    j = i + 1
    if pattern[j:j + 1] in ("!", "^"):
        j += 1
    if pattern[j:j + 1] == "]":
        j += 1
    end = pattern.find("]", j)
    return end


def _class_matches(body, c):
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            if body[i] <= c <= body[i + 2]:
                return True
            i += 3
        else:
            if body[i] == c:
                return True
            i += 1
    return False


def _match(tokens, s, j):
    """True when tokens match s[j:] entirely."""
    if not tokens:
        return j == len(s)
    head, rest = tokens[0], tokens[1:]
    kind = head[0]
    if kind == "char":
        return j < len(s) and s[j] == head[1] and _match(rest, s, j + 1)
    if kind == "?":
        return j < len(s) and _match(rest, s, j + 1)
    if kind == "*":
        return any(_match(rest, s, k) for k in range(j, len(s) + 1))
    if kind == "class":
        _, negated, body = head
        return (j < len(s) and _class_matches(body, s[j]) != negated
                and _match(rest, s, j + 1))
    _, op, alternatives = head
    return any(_group_matches(op, alternatives, s[j:k]) and _match(rest, s, k)
               for k in range(j, len(s) + 1))


def _group_matches(op, alternatives, piece):
    """True when `piece` as a whole matches the extglob group."""
    def one(text):
        return any(_match(alt, text, 0) for alt in alternatives)

    def repeated(text, at_least_one):
        if not text:
            return not at_least_one
        return any(one(text[:k]) and repeated(text[k:], False) for k in range(1, len(text) + 1))

    if op == "@":
        return one(piece)
    if op == "?":
        return piece == "" or one(piece)
    if op == "!":
        return not one(piece)
    return repeated(piece, at_least_one=(op == "+"))
