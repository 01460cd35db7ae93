"""The ``ueobench`` command line: one click group, its subcommands from ``run``, ``report`` and ``inspect``.

Each subcommand only builds one typed request and hands it to one function of the Python API (``ueobench.api``).
Starts fast: nothing here imports torch, open_clip or scikit-learn; ``--help``, ``list``, ``show``, ``status``
(of saved sweeps) and ``table`` never load them.
"""
from __future__ import annotations

import click

from . import inspect, report, run
from .common import Group, debug_option, plugins_option


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@plugins_option
@debug_option
@click.version_option(package_name="ueobench")
def cli() -> None:
    """Benchmark unsupervised CLIP fine-tuning under category shift."""


for command in (run.run, run.sweep, run.status, report.table, report.plot, report.site, report.export, report.reference,
                inspect.list_, inspect.show, inspect.data, inspect.pretrain):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="ueobench")


if __name__ == "__main__":
    main()
