"""Shared pieces of the subcommands."""

from __future__ import annotations

import argparse


class Given(argparse.Action):
    """Store an option's value and note in ``namespace.given`` that it was typed, so that a
    resumed run can tell a value left at its default from one asked for."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}
