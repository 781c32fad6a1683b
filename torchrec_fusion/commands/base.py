"""What a command of the ``torchrec-fusion`` program is: a parser and a function of its arguments."""

import abc
import argparse
import re


class Command(abc.ABC):
    """One subcommand: :meth:`add_arguments` declares its flags, :meth:`run` does the work and returns
    the exit code. Errors a user can fix are raised (ValueError, OSError, ...) and reported by the
    program's one error handler."""

    help: str = ""  # one line, in the program's list of commands
    description: str = ""  # the command's own --help (default: its help line)

    @abc.abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Adds this command's flags to its parser."""

    @abc.abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Runs the command; returns the exit code."""


def plain(text: str) -> str:
    """``text`` without reStructuredText markup, for a terminal: ``x``, `x` and :role:`~a.x` become x.

    Example::

        text = "see :func:`~torchrec_fusion.cli.main` and ``--help``"
        assert plain(text) == "see torchrec_fusion.cli.main and --help"
    """
    text = re.sub(r":[\w:]+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"``?([^`]+)``?", r"\1", text)
