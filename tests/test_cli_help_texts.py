"""The command line describes itself: every argument of every command has a description, every option that takes
a value states its default (or that it is required), every command's help prints, and ``--version`` prints the
package version."""

import argparse

import pytest

from step1x_edit import __version__
from step1x_edit.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, name: str = "step1x-edit"):
    """(command name, parser) for the top-level parser and every subcommand under it."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                yield from _commands(subparser, f"{name} {command}")


@pytest.fixture(scope="module")
def commands():
    return list(_commands(build_parser()))


def _arguments(commands):
    for name, parser in commands:
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                yield name, "/".join(action.option_strings) or action.dest, action


def test_every_argument_has_a_description(commands):
    missing = [f"{name} {argument}" for name, argument, action in _arguments(commands)
               if not action.help or action.help == argparse.SUPPRESS]
    assert missing == []


def test_every_option_that_takes_a_value_states_its_default(commands):
    silent = [f"{name} {argument}: {action.help}" for name, argument, action in _arguments(commands)
              if action.option_strings and action.nargs != 0 and not action.required
              and not any(word in (action.help or "").lower() for word in ("default", "required"))]
    assert silent == []


def test_every_command_prints_its_help(commands):
    for name, parser in commands:
        assert parser.format_help().startswith(f"usage: {name}")


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"step1x-edit {__version__}\n"


def test_version_given_a_value_is_a_usage_error_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version=1.0"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert error.splitlines()[-1] == "step1x-edit: error: argument --version: ignored explicit argument '1.0'"
