"""What a command of the ``torchrec-fusion`` program is: a parser and a function of its arguments."""

import abc
import argparse


class Command(abc.ABC):
    """One subcommand: :meth:`add_arguments` declares its flags, :meth:`run` does the work and returns
    the exit code. Errors a user can fix are raised (ValueError, OSError, ...) and reported by the
    program's one error handler."""

    help: str = ""

    @abc.abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Adds this command's flags to its parser."""

    @abc.abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Runs the command; returns the exit code."""
