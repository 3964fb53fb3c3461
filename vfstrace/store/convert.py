"""`vfstrace convert`: a trace from one form into the other."""

from __future__ import annotations

from pathlib import Path

import click

from vfstrace.report.terminal import term
from vfstrace.store.read import load
from vfstrace.store.writer import save


@click.command("convert")
@click.argument("src", metavar="IN", type=click.Path(path_type=Path))
@click.argument("dst", metavar="OUT", type=click.Path(path_type=Path))
@click.option("-f", "--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--shared", is_flag=True,
              help="Let OUT's group read it (0750/0640); by default only its owner can (0700/0600).")
def convert(src, dst, force, shared):
    """Convert a trace between a .vft directory and JSON Lines (by OUT's suffix).

    \b
    Examples:
      vfstrace convert run.vft run.jsonl     # to hand-editable JSON Lines
      vfstrace convert case.jsonl case.vft   # back to a Parquet trace
    """
    df = load(src)
    meta = df.attrs["meta"]
    n = save(df, dst, meta, overwrite=force, shared=shared)
    click.echo(f"{term(src)} -> {term(dst)}: {n} events")
