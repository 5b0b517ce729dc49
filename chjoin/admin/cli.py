"""`chjoinctl`: check a node, see and clean containers, install the SPANK plugin, and the
Slurm prolog and epilog. Bash completion: eval "$(_CHJOINCTL_COMPLETE=bash_source chjoinctl)"."""

import json
import os
import sys

import click

from chjoin import __version__


def emit(as_json, data, text):
    click.echo(json.dumps(data, indent=2) if as_json else text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="chjoinctl")
def main():
    """Manage chjoin on this node: check it, see and clean its containers, install the SPANK
    plugin, and run the Slurm prolog and epilog."""


@main.command()
@click.argument("image", required=False)
@click.option("--plugstack", default="/etc/slurm/plugstack.conf", show_default=True,
              help="Slurm's plugstack.conf, whose lines (and includes) load the SPANK plugin.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def check(image, plugstack, as_json):
    """Can this node run containers for me (and IMAGE)? Each line is ok, warn or fail, what
    was tried, and the fix. Exits 0 when nothing fails, 1 otherwise."""
    from chjoin.admin import checks
    results = checks.node_checks(plugstack) + (checks.image_checks(image) if image else [])
    failed = any(r.status == checks.FAIL for r in results)
    emit(as_json, {"ok": not failed, "checks": [r.as_dict() for r in results]},
         "\n".join(r.line() for r in results))
    sys.exit(1 if failed else 0)


def _uid_filter(uid, everyone):
    if os.geteuid() != 0:
        if (uid is not None and uid != os.geteuid()) or everyone:
            raise click.UsageError("only root may look at other users' groups")
        return os.geteuid()
    return uid


@main.command()
@click.option("--uid", type=int, help="Only this user's groups (root's default: everyone's).")
@click.option("--tag", help="Only the groups of this tag (--join-tag).")
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
def ps(uid, tag, as_json):
    """The chjoin groups and containers on this node: this user's (root: everyone's). Per
    group: tag, uid, state, ranks arrived/expected, age, holder, image, each rank, and the
    processes inside its container (found by namespace inode). Groups that no live process
    holds any more are marked stale."""
    from chjoin.admin import groups, names
    uid = _uid_filter(uid, False)
    records = groups.survey(uid, tag)
    found = [n for n in names.survey(uid) if tag is None or n["tag"] == tag]
    emit(as_json, {"records": records, "names": found},
         groups.text(records) + "\n\n" + names.text(found))


def _named(name, job, uid):
    """The named container a command acts on, or an error in one line."""
    from chjoin.admin import names
    if job is None and os.environ.get("SLURM_JOB_ID"):
        job = os.environ["SLURM_JOB_ID"]        # inside a job: the job's name
    try:
        return names.find(name, job, _uid_filter(uid, False))
    except names.Problem as e:
        raise click.ClickException(str(e)) from None


_job_option = click.option("--job", help="The Slurm job the name belongs to (default: the job "
                           "we run in, else the only one; none: outside Slurm).")
_uid_option = click.option("--uid", type=int, help="Only this user's names (root).")


@main.command()
@click.argument("name")
@_job_option
@_uid_option
@click.option("--grace", type=float, default=10.0, show_default=True,
              help="Seconds the processes inside have after SIGTERM, before SIGKILL.")
def stop(name, job, uid, grace):
    """End named container NAME: every process inside gets SIGTERM (SIGKILL after --grace),
    then its holder goes; nothing is left of it (no process, record or -W layer)."""
    from chjoin.admin import names
    entry = _named(name, job, uid)
    inside = entry["inside"]
    problem = names.as_owner(entry, names.stop, entry, grace, timeout=grace + 30)
    if problem:
        raise click.ClickException(f"stop {name}: {problem}")
    click.echo(f"stopped {name}{' (job ' + entry['job'] + ')' if entry['job'] else ''}: "
               f"{inside} process{'es' if inside != 1 else ''} inside ended, holder pid "
               f"{entry['holder']} gone")


@main.command()
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=True))
@_job_option
@_uid_option
@click.option("--force", is_flag=True, help="Replace FILE if it exists (never a directory).")
def save(name, file, job, uid, force):
    """Pack named container NAME's current root (the image with its -W changes) into the
    SquashFS image FILE, written to a temporary file beside it and renamed. Refuses a
    directory, and an existing FILE unless --force."""
    from chjoin.admin import names
    path = os.path.abspath(file)
    if os.path.isdir(path):
        raise click.ClickException(f"save: {file} is a directory; give the image's file name")
    if os.path.lexists(path) and not force:
        raise click.ClickException(f"save: {file} exists (--force replaces it)")
    entry = _named(name, job, uid)
    if not entry["holder_alive"]:
        raise click.ClickException(f"save: {name}: the container is gone (its holder died)")
    problem = names.as_owner(entry, names.save, entry, path, force, timeout=3600)
    if problem:
        raise click.ClickException(f"save {name}: {problem}")
    click.echo(f"saved {name} to {file} ({os.path.getsize(path) / 2**20:.1f} MiB)")


@main.command()
@click.option("--uid", type=int, help="Only this user's records (root's default: everyone's).")
@click.option("--tag", help="Only the record of this tag (--join-tag).")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the removals as JSON.")
def gc(uid, tag, dry_run, as_json):
    """Remove what no live process uses: the groups that are over (dismissing their holders),
    and records and semaphores left with no group; this user's (root: any user's). Each record
    is cleaned under its lock, as a rank does; one being used at that moment is skipped. Root
    sweeps each user's objects in a child running as that user, and leaves alone (one problem
    line each) objects not owned by the uid in their name."""
    from chjoin import sweep
    done = sweep.sweep_all(_uid_filter(uid, False), tag=tag, dry_run=dry_run)
    verb = "would " if dry_run else ""
    lines = [f"{verb}remove {d}" if what == "removed" else
             f"{verb}dismiss holder pid {d}" if what == "holder" else f"problem: {d}"
             for what, d in done]
    emit(as_json, {"dry_run": dry_run, "removed": [d for w, d in done if w == "removed"],
                   "holders": [d for w, d in done if w == "holder"],
                   "problems": [d for w, d in done if w == "problem"]},
         "\n".join(lines) or "nothing to remove")


@main.group()
def spank():
    """The SPANK plugin (srun --chjoin-image): install it, check it against this Slurm."""


@spank.command("check")
@click.option("--plugstack", default="/etc/slurm/plugstack.conf", show_default=True,
              help="Slurm's plugstack.conf.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def spank_check(plugstack, as_json):
    """Whether the plugin plugstack.conf loads is installed and built for this Slurm."""
    from chjoin.admin import checks
    result = checks.spank_plugin(plugstack)
    emit(as_json, result.as_dict(), result.line())
    sys.exit(1 if result.status == checks.FAIL else 0)


@spank.command("install")
@click.option("--prefix", default=sys.prefix, show_default=True,
              help="Install PREFIX/lib/slurm/chjoin_spank.so.")
@click.option("--plugstack-dir", default="/etc/slurm/plugstack.conf.d", show_default=True,
              help="Write the plugstack line to DIR/chjoin.conf.")
@click.option("--builder", default=os.path.join(os.path.dirname(sys.executable),
                                                "chjoin-spank-build"),
              show_default="chjoin-spank-build beside chjoin's Python",
              help="The builder the plugin runs (plugstack builder=).")
@click.option("--source", type=click.Path(exists=True, file_okay=False),
              help="The plugin's sources (default: those installed with chjoin).")
@click.option("--dry-run", is_flag=True, help="Print what it would do; do nothing.")
def spank_install(prefix, plugstack_dir, builder, source, dry_run):
    """Build the plugin for this node's Slurm (needs gcc, make and Slurm's headers), install
    it and write its plugstack line. slurmd and srun read it at their next start."""
    import shutil
    import subprocess

    from chjoin.admin import spank as plugin
    source = source or plugin.source_dir()
    if source is None:
        raise click.ClickException("the plugin's sources are not installed; give --source")
    build, steps = plugin.install_plan(os.path.abspath(prefix), os.path.abspath(plugstack_dir),
                                       os.path.abspath(builder), source)
    try:
        for description, action in steps:
            click.echo(("would " if dry_run else "") + description)
            if dry_run:
                continue
            if callable(action):
                action()
                continue
            done = subprocess.run(action, capture_output=True, text=True)
            if done.returncode:
                raise click.ClickException(f"{' '.join(action)} failed:\n"
                                           f"{done.stdout}{done.stderr}".rstrip())
    finally:
        shutil.rmtree(build, ignore_errors=True)


CONFIG_HELP = "The settings file (default /etc/chjoin/slurm.conf; used only if root's)."


@main.command()
@click.option("--config", default=None, help=CONFIG_HELP)
@click.option("--comment", default=None,
              help="The job's comment, instead of asking squeue (for trying it by hand).")
def prolog(config, comment):
    """The Slurm Prolog (slurm/prolog runs it as root, with slurmd's SLURM_JOB_* environment):
    fails the job when this node can't run its user's containers, checks and stages images."""
    from chjoin import slurm
    sys.exit(slurm.main(["prolog", *(["--config", config] if config else []),
                         *(["--comment", comment] if comment is not None else [])]))


@main.command()
@click.option("--config", default=None, help=CONFIG_HELP)
def epilog(config):
    """The Slurm Epilog (slurm/epilog runs it as root, with slurmd's SLURM_JOB_* environment):
    removes what chjoin left for the job (holders, records as `gc` does, staging). Exits 0."""
    from chjoin import slurm
    sys.exit(slurm.main(["epilog", *(["--config", config] if config else [])]))


@main.group()
def cdi():
    """CDI specs for `chjoin -d`."""


@cdi.command("generate")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the spec here (e.g. /etc/cdi/nvidia.yaml); default: standard output.")
@click.option("--format", "fmt", type=click.Choice(["json", "yaml"]),
              help="Default: from --output's suffix, else yaml (as nvidia-ctk).")
@click.option("--dev", default="/dev", show_default=True, help="Where the device nodes are.")
def cdi_generate(output, fmt, dev):
    """Write a CDI spec (kind nvidia.com/gpu) for this host's NVIDIA GPUs, as `nvidia-ctk cdi
    generate` does, for sites without NVIDIA's container toolkit: /dev/nvidia* nodes, the
    driver's libraries (`ldconfig -p`), its binaries, a device per GPU by index and UUID, and
    `all`. Exits 1 when the host has no NVIDIA GPU."""
    from chjoin.admin import cdi as cdimod
    try:
        doc = cdimod.generate(dev)
    except cdimod.NoDevices as e:
        raise click.ClickException(str(e))
    fmt = fmt or ("json" if output and output.endswith(".json") else "yaml")
    text = cdimod.dump(doc, fmt)
    if output:
        with open(output, "w") as f:
            f.write(text)
    else:
        click.echo(text, nl=False)
