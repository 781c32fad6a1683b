"""What a command of the ``torchrec-fusion`` program is: a parser and a function of its arguments."""

import abc
import argparse
import os
import re
import tempfile
from typing import Dict, List


class Command(abc.ABC):
    """One subcommand: :meth:`add_arguments` declares its flags, :meth:`run` does the work and returns
    the exit code. Errors a user can fix are raised (ValueError, OSError, ...) and reported by the
    program's one error handler."""

    help: str = ""  # one line, in the program's list of commands
    description: str = ""  # the command's own --help (default: its help line)
    # the flags naming what the command writes: "dir" (a folder it creates or fills) or "file"
    outputs: Dict[str, str] = {}

    def check_outputs(self, argv: List[str]) -> None:
        """Raises OSError when an output path among ``argv`` cannot be written: called before the
        command's flags are built and before any work, so that a bad path is reported at once."""
        parser = argparse.ArgumentParser(add_help=False)
        for flag in self.outputs:
            parser.add_argument(flag)
        known, _ = parser.parse_known_args(argv)
        for flag, kind in self.outputs.items():
            path = getattr(known, flag.lstrip("-").replace("-", "_"))
            if path:
                check_writable(path, flag, kind)

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


def check_writable(path: str, flag: str, kind: str) -> None:
    """Raises OSError naming ``flag`` unless ``path`` can be written as a ``kind`` ("dir" or "file"):
    the nearest folder that exists (the path itself, for an existing folder) must take a new file.

    Example::

        import pytest, tempfile
        check_writable(tempfile.gettempdir() + "/new/run", "--output-dir", "dir")  # created later: fine
        with pytest.raises(OSError, match="--output-dir"):
            check_writable("/proc/x", "--output-dir", "dir")
    """
    path = os.path.abspath(path)
    if os.path.isdir(path) and kind == "file":
        raise IsADirectoryError(f"{flag} {path}: is a folder, a file is expected")
    if os.path.exists(path) and not os.path.isdir(path) and kind == "dir":
        raise NotADirectoryError(f"{flag} {path}: is a file, a folder is expected")
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{flag} {path}: {folder} is not a folder")
    try:  # os.access says yes to root everywhere: try a file (removed at once)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
    except OSError as e:
        raise PermissionError(f"{flag} {path}: cannot write in {folder} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)
