"""CDI (Container Device Interface) specs → what a launch does with them: binds, device nodes to
check, symlinks and ldconfig directories for the winner, environment pairs for every rank.

`-d`/`--cdi[=KIND|=FILE]`, `--cdi-dirs`, `$CH_RUN_CDI_DIRS` as in ch-run 0.45.2, with its
messages and exit code 31, and what spec users have beyond it: YAML specs (as NVIDIA writes
them), device names (`vendor.com/gpu=0`, `=GPU-<uuid>`, `=0,1`, `=all`), a device's own
`containerEdits`, the later directory winning for a kind found in two, and the CDI schema
checked (the subset of JSON Schema that `schema/schema.json` uses: `chjoin/cdi-schema/`, from
the CDI project, Apache-2.0).

Only a launch with `-d` imports this module; `json` is imported when a spec is read, `yaml` only
when a YAML spec is. Nothing here runs a program or mounts: `launch` applies the result.
"""

import os

from chjoin.log import Fatal
from chjoin.value import Value

DEFAULT_DIRS = "/etc/cdi:/var/run/cdi"
ALL = "\0all"          # a bare -d / --cdi: every spec found
SPEC_SUFFIXES = (".json", ".yaml", ".yml")
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
SCHEMA_DIR = os.path.join(os.path.dirname(__file__), "cdi-schema")

# NVIDIA's hooks (`nvidia-cdi-hook X`, `nvidia-ctk hook X`): two emulated, the rest not needed
# in a container that binds the host's whole /dev and sets no cgroup.
EMULATED_HOOKS = ("update-ldcache", "create-symlinks")
KNOWN_HOOKS = ("apply-cuda-memory-limits", "chmod", "disable-device-node-modification",
               "enable-cuda-compat", "update-application-profile", "create-soname-symlinks",
               "cudacompat")
HOOK_PROGRAMS = ("nvidia-cdi-hook", "nvidia-ctk")


class Request(Value):
    """One -d: every spec (`kind` None, `path` None), a kind and maybe device names, or a file."""
    text: str
    kind: str | None = None
    names: tuple = ()          # () = every device of the kind
    path: str | None = None


class Selection(Value):
    """What the -d options of one launch select, ready to apply.

    `env`: per request, in command-line order, the (name, value) pairs it sets; the rest is for
    the container as a whole (the winner): `binds` (src, dst), `nodes` (guest path, type, what
    asked for it), `symlinks` (target, link), `ldconfig` (guest directories), and `terms`: the
    text two launches must agree on to share one container."""
    env: tuple
    binds: tuple
    nodes: tuple
    symlinks: tuple
    ldconfig: tuple
    terms: str


def parse_request(text):
    """The value of one -d/--cdi into a `Request`, refusing what ch-run refuses (and device
    names that CDI does not allow)."""
    if text == ALL:
        return Request(text)
    if text == "":
        raise Fatal("CDI: empty resource ID")
    if text.endswith(SPEC_SUFFIXES):
        return Request(text, path=os.path.abspath(text))
    vendor, slash, rest = text.partition("/")
    kind_class, _, names = rest.partition("=")
    if "/" in kind_class:
        raise Fatal("CDI: resource kind with multiple slashes")
    if not slash or not vendor or not kind_class:
        raise Fatal(f"CDI: invalid resource ID: {text} (expected VENDOR/CLASS[=NAME[,NAME...]])")
    kind = f"{vendor}/{kind_class}"
    wanted = []
    for name in names.split(",") if names else ():
        if not name or not set(name) <= NAME_CHARS:
            raise Fatal(f"CDI: invalid device name: {name!r} in {text}")
        if name not in wanted:
            wanted.append(name)
    return Request(text, kind=kind, names=tuple(wanted))


def looks_like_request(text):
    """True when `text`, given after a bare -d with a space, is its value rather than IMAGE: a
    qualified kind (`vendor.tld/class[=names]`, one slash, no tag's `:`) that is no existing
    path, or a spec file name."""
    if text.endswith(SPEC_SUFFIXES) and not text.startswith("-"):
        return True
    vendor, slash, rest = text.partition("/")
    kind_class, _, names = rest.partition("=")
    class_chars = NAME_CHARS - {":"}
    return bool(slash and "." in vendor and not vendor.startswith(".") and kind_class
                and set(vendor) <= class_chars and set(kind_class) <= class_chars
                and set(names) <= NAME_CHARS | {","} and not os.path.exists(text))


def search_dirs(option, environ):
    """--cdi-dirs, else $CH_RUN_CDI_DIRS, else /etc/cdi:/var/run/cdi; the text, for messages."""
    if option is not None:
        if not option:
            raise Fatal("--cdi-dirs: PATHS must be non-empty")
        return option
    return environ.get("CH_RUN_CDI_DIRS") or DEFAULT_DIRS


# --- reading specs ------------------------------------------------------------------------------

class Spec(Value):
    path: str
    kind: str
    devices: tuple        # ((name, edits), ...), edits as in `containerEdits`
    edits: dict           # the spec's own containerEdits ({} if none)
    rank: int             # the search directory's index (later wins); -1: named on the command line


def read(path, rank=-1):
    """One spec file: parsed (JSON, or YAML by its suffix), checked against the CDI schema, and
    its paths checked as ch-run checks them. Every failure is one `Fatal` naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Fatal(f"CDI: can't open: {path}: {e.strerror}") from None
    if path.endswith(".json"):
        import json

        try:
            text = data.decode("utf-8")
            doc = json.loads(text)
        except UnicodeDecodeError as e:
            raise Fatal(f"CDI: JSON failed at byte {e.start}: {path}") from None
        except ValueError as e:
            offset = len(text[:e.pos].encode())
            raise Fatal(f"CDI: JSON failed at byte {offset}: {path}: {e.msg}") from None
    else:
        doc = _load_yaml(data, path)
    problem = validate(doc)
    if problem == "devices: required" and isinstance(doc.get("containerEdits"), dict):
        problem = None         # ch-run's own fixtures have no devices: their edits are the spec
    if problem:
        raise Fatal(f"CDI: invalid spec: {path}: {problem}")
    kind = doc["kind"]
    vendor, _, kind_class = kind.partition("/")
    if not vendor or not kind_class or "/" in kind_class:
        raise Fatal(f"CDI: invalid spec: {path}: kind: {kind!r} is not VENDOR/CLASS")
    base = os.path.dirname(path)
    edits = _checked_edits(doc.get("containerEdits") or {}, "containerEdits", base, path)
    devices = []
    for i, device in enumerate(doc.get("devices") or ()):
        name = device["name"]
        if not name or not set(name) <= NAME_CHARS:
            raise Fatal(f"CDI: invalid spec: {path}: devices[{i}].name: {name!r} is not a "
                        "device name")
        devices.append((name, _checked_edits(device["containerEdits"] or {},
                                             f"devices[{i}].containerEdits", base, path)))
    return Spec(path, kind, tuple(devices), edits, rank)


def _load_yaml(data, path):
    try:
        import yaml
    except ImportError:
        raise Fatal(f"CDI: can't read YAML spec: {path}: PyYAML is not installed "
                    "(pip install pyyaml)") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(data, Loader=loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "?"
        raise Fatal(f"CDI: YAML failed at {where}: {path}: "
                    f"{getattr(e, 'problem', None) or e}") from None


def _checked_edits(edits, field, base, path):
    """containerEdits with what ch-run requires of it: `=` in every env entry (not first), an
    absolute guest path for every mount (a relative host path is taken from the spec's
    directory), and a path for every device node."""
    problem = validate(edits, {"$ref": "defs.json#/definitions/containerEdits"}, field,
                       current=_schema()[1])
    if problem:
        raise Fatal(f"CDI: invalid spec: {path}: {problem}")
    for i, entry in enumerate(edits.get("env") or ()):
        if not isinstance(entry, str) or "=" not in entry[1:]:
            raise Fatal(f"CDI: invalid spec: {path}: {field}.env[{i}]: not NAME=VALUE: {entry!r}")
    mounts = []
    for mount in edits.get("mounts") or ():
        guest = mount["containerPath"]
        if not guest.startswith("/"):
            raise Fatal(f"CDI: can't bind relative guest path: {guest}")
        if is_bind(mount):     # a relative source is the spec's directory's, as in ch-run
            mount = {**mount, "hostPath": os.path.normpath(os.path.join(base, mount["hostPath"]))}
        mounts.append(mount)
    for node in edits.get("deviceNodes") or ():
        if not node["path"].startswith("/"):
            raise Fatal(f"CDI: invalid spec: {path}: {field}.deviceNodes: relative path: "
                        f"{node['path']}")
    return {**edits, "mounts": mounts}


# --- the schema: the subset of JSON Schema (draft 7) that CDI's schema.json uses ---------------

_SCHEMAS = []


def _schema(directory=None):
    """(schema.json, defs.json) as parsed documents, chjoin's copy unless `directory`."""
    import json

    if directory is not None:
        return tuple(json.load(open(os.path.join(directory, name)))
                     for name in ("schema.json", "defs.json"))
    if not _SCHEMAS:
        _SCHEMAS.extend(_schema(SCHEMA_DIR))
    return tuple(_SCHEMAS)


def validate(doc, schema=None, where="", schemas=None, current=None):
    """The first way `doc` breaks `schema` (default: the whole spec's) as "FIELD: why", or None.
    Handles type, properties, required, items, minimum, maximum and $ref (within the current
    file, or into `defs.json`)."""
    root, defs = schemas = schemas or _schema()
    if schema is None:
        schema, current = root, root
    current = current or defs
    if "$ref" in schema:
        file, _, pointer = schema["$ref"].partition("#")
        target = current = defs if file == "defs.json" else root if file else current
        for part in pointer.strip("/").split("/"):
            target = target[part]
        return validate(doc, target, where, schemas, current)
    label = where or "(the document)"
    kind = schema.get("type")
    if kind and (not isinstance(doc, _TYPES[kind]) or
                 kind in ("integer", "number") and isinstance(doc, bool)):
        return f"{label}: must be {'an' if kind[0] in 'aeio' else 'a'} {kind}"
    prefix = f"{where}." if where else ""
    if isinstance(doc, dict):
        for name in schema.get("required", ()):
            if name not in doc:
                return f"{prefix}{name}: required"
        for name, sub in schema.get("properties", {}).items():
            if name in doc:
                found = validate(doc[name], sub, f"{prefix}{name}", schemas, current)
                if found:
                    return found
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            found = validate(item, schema["items"], f"{where}[{i}]", schemas, current)
            if found:
                return found
    if isinstance(doc, (int, float)) and not isinstance(doc, bool):
        if "minimum" in schema and doc < schema["minimum"]:
            return f"{label}: must be at least {schema['minimum']}"
        if "maximum" in schema and doc > schema["maximum"]:
            return f"{label}: must be at most {schema['maximum']}"
    return None


_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
          "boolean": bool}


# --- finding specs and selecting devices --------------------------------------------------------

def scan(dirs, log):
    """The specs of the search path `dirs` (a `:` list), in directory order, as ch-run looks
    for them, *.yaml and *.yml as well as *.json."""
    found_dir = False
    specs = []
    seen = set()
    for rank, directory in enumerate(d for d in dirs.split(":") if d):
        if not os.path.isdir(directory):
            log.info(f"CDI: directory not found, skipping: {directory}")
            continue
        found_dir = True
        log.info(f"CDI: looking for resource files in: {directory}")
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if not name.endswith(SPEC_SUFFIXES) or not os.path.isfile(path):
                continue
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:
                log.info(f"CDI: spec already read, skipping: {path}")
                continue
            seen.add((st.st_dev, st.st_ino))
            spec = read(path, rank)
            log.info(f"CDI: spec read OK: {spec.kind}: {path}")
            specs.append(spec)
    if not found_dir:
        raise Fatal(f"CDI: no directories found: {dirs}")
    if not specs:
        raise Fatal(f"CDI: no resource files found: {dirs}")
    log.debug(f"CDI: read {len(specs)} specs")
    return specs


def by_kind(specs, log):
    """{kind: spec}: of two specs of one kind the later directory's wins, as in CDI's reference
    library (ch-run 0.45 refuses); two in one directory are an error, as in ch-run."""
    kinds = {}
    for spec in specs:
        other = kinds.get(spec.kind)
        if other is not None:
            if other.rank == spec.rank:
                raise Fatal(f"CDI: device found in multiple spec files: {spec.kind}: "
                            f"{other.path} and {spec.path}")
            log.info(f"CDI: {spec.kind}: {spec.path} overrides {other.path}")
        kinds[spec.kind] = spec
    return kinds


def devices_of(spec, request):
    """The (name, edits) of `spec` that `request` selects: all, or those it names (`all` is
    the device of that name if the spec has one, else every device)."""
    if not request.names:
        return list(spec.devices)
    by_name = dict(spec.devices)
    chosen = []
    for name in request.names:
        if name in by_name:
            chosen.append((name, by_name[name]))
        elif name == "all":
            chosen += spec.devices
        else:
            names = ", ".join(n for n, _ in spec.devices) or "none"
            raise Fatal(f"CDI: no such device: {spec.kind}={name} in {spec.path} "
                        f"(its devices: {names})")
    return chosen


def select(values, dirs_option, environ, log):
    """The `Selection` of a launch's -d values (in command-line order)."""
    requests = [parse_request(v) for v in values]
    specs = []
    if any(r.path is None for r in requests):
        specs = scan(search_dirs(dirs_option, environ), log)
    kinds = by_kind(specs, log)
    chosen = []          # per request: [(spec, [(name, edits)])]
    for request in requests:
        if request.path is not None:
            spec = read(request.path)
            log.info(f"CDI: spec read OK: {spec.kind}: {spec.path}")
            chosen.append([(spec, list(spec.devices))])
        elif request.kind is None:
            chosen.append([(spec, list(spec.devices)) for spec in kinds.values()])
        elif request.kind in kinds:
            spec = kinds[request.kind]
            chosen.append([(spec, devices_of(spec, request))])
        else:
            raise Fatal(f"CDI: no matching resources found: {request.text}")
    return merge(chosen, log)


def merge(chosen, log):
    """One `Selection` from the (spec, devices) each request chose: the container's edits once
    each (a later mount at the same guest path wins), the environment per request."""
    env, binds, nodes, links, ldconfig, terms = [], {}, {}, {}, [], []
    for per_request in chosen:
        pairs = []
        for spec, devices in per_request:
            terms.append(f"{spec.kind}={','.join(n for n, _ in devices) or '-'}@{spec.path}")
            for origin, edits in [(spec.kind, spec.edits)] + [
                    (f"{spec.kind}={name}", e) for name, e in devices]:
                for entry in edits.get("env") or ():
                    name, _, value = entry.partition("=")
                    pairs.append((name, value))
                for mount in edits.get("mounts") or ():
                    _mount(mount, binds, ldconfig, log)
                for node in edits.get("deviceNodes") or ():
                    _device_node(node, origin, nodes, binds)
                for hook in edits.get("hooks") or ():
                    _hook(hook, links, ldconfig, log)
        env.append(tuple(pairs))
    return Selection(env=tuple(env), binds=tuple((src, dst) for dst, src in binds.items()),
                     nodes=tuple(nodes.values()),
                     symlinks=tuple((target, link) for link, target in links.items()),
                     ldconfig=tuple(dict.fromkeys(ldconfig)), terms=" ".join(sorted(set(terms))))


def _mount(mount, binds, ldconfig, log):
    src, dst = mount["hostPath"], os.path.normpath(mount["containerPath"])
    if not is_bind(mount):
        if log.verbosity >= 0:
            from chjoin.log import emit

            emit("info", f"CDI: ignoring non-bind mount: {src} -> {dst}")
        return
    binds[dst] = src
    if is_library(dst):
        ldconfig.append(os.path.dirname(dst))


def is_bind(mount):
    options = mount.get("options") or ()
    return "bind" in options or "rbind" in options or mount.get("type") == "bind"


def is_library(path):
    """ch-run's test for a library, without `re`: the name ends in `.so` or `.so.N[.N...]`."""
    name = os.path.basename(path)
    head, so, tail = name.rpartition(".so")
    if not so or not head:
        return False
    return tail == "" or tail.startswith(".") and all(p.isdigit() for p in tail[1:].split("."))


def _device_node(node, origin, nodes, binds):
    """A device node: in the host's /dev, which the container shows, it must exist (checked by
    the winner); one outside /dev, or whose host path differs, is bound from the host."""
    path = os.path.normpath(node["path"])
    host = node.get("hostPath") or path
    if host != path or not path.startswith("/dev/"):
        binds[path] = host
    else:
        nodes.setdefault((path, node.get("type") or ""), (path, node.get("type") or "", origin))


def _hook(hook, links, ldconfig, log):
    """NVIDIA's update-ldcache and create-symlinks emulated, its other hooks ignored with a -v
    line, any other hook ignored with a warning: no host program is run."""
    args = list(hook.get("args") or ())
    program = os.path.basename(hook["path"])
    words = args[1:] if args and os.path.basename(args[0]) == program else args
    if program == "nvidia-ctk" and words[:1] == ["hook"]:
        words = words[1:]
    shown = " ".join([hook["path"], *(args[1:] if args else ())])
    if program not in HOOK_PROGRAMS or not words or words[0] not in (*EMULATED_HOOKS,
                                                                     *KNOWN_HOOKS):
        log.warning(f"CDI: ignoring unknown hook: {shown}")
        return
    name, options = words[0], words[1:]
    if name not in EMULATED_HOOKS:
        log.info(f"CDI: ignoring known hook: {name}: {shown}")
        return
    flag = "--folder" if name == "update-ldcache" else "--link"
    values = []
    i = 0
    while i < len(options):
        word = options[i]
        if word == flag and i + 1 < len(options):
            values.append(options[i + 1])
            i += 1
        elif word.startswith(flag + "="):
            values.append(word[len(flag) + 1:])
        i += 1
    log.info(f"CDI: emulating hook: {name}: {' '.join(values)}")
    for value in values:
        if name == "update-ldcache":
            ldconfig.append(os.path.normpath(value))
            continue
        target, sep, link = value.partition("::")
        if sep and target and link.startswith("/"):
            links[os.path.normpath(link)] = target
        else:
            log.warning(f"CDI: create-symlinks: ignoring malformed link: {value}")
