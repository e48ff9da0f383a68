"""The ``step1x-edit bench``command group (placeholder until implemented)."""

import argparse


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command group to the top-level parser."""
