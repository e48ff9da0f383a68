"""The ``step1x-edit data``command group (placeholder until implemented)."""

import argparse


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group to the top-level parser."""
