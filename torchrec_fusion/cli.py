"""The ``torchrec-fusion`` command line: a table of commands (torchrec_fusion.commands) behind one
error handler."""

import argparse
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, List, Optional, Sequence

from torchrec_fusion.commands import COMMANDS
from torchrec_fusion.commands.base import plain

# errors a user can act on: printed as one line, exit code 2 (anything else is a bug: a traceback)
USER_ERRORS = (ValueError, OSError, KeyError, RuntimeError, FloatingPointError, TypeError)


def _command_in(argv: Sequence[str]) -> Optional[str]:
    """The command ``argv`` names: the program itself has no flags but --help, so it is the first word."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The program's parser. Every command is listed, but only the one ``argv`` names (every one when
    ``argv`` is None) gets its flags: building them imports what the command needs (train's flags come
    from the registries, which import torch), and ``--help`` or a path error must answer at once."""
    chosen = None if argv is None else _command_in(argv)
    parser = argparse.ArgumentParser(prog="torchrec-fusion", description=plain(__doc__ or ""))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=plain(command.help), description=plain(command.description or command.help))
        if argv is None or name == chosen:
            command.add_arguments(p)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process stands so that its cleanup runs (ranks ended, lock freed)."""


def _terminated(signum: int, frame: Optional[FrameType]) -> None:
    raise Terminated()


def main(argv: Optional[List[str]] = None) -> int:
    """Runs one command. A user error is one line and exit code 2; an interrupt (Ctrl-C, SIGTERM)
    is one line and 130 (143 for SIGTERM), after the command's cleanup has run."""
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = _command_in(argv)
    if chosen is not None:
        try:  # output paths checked before the flags are built (which imports torch) and before any work
            COMMANDS[chosen].check_outputs(argv)
        except OSError as e:
            print(f"torchrec-fusion {chosen}: error: {e}", file=sys.stderr)
            return 2
    args = build_parser(argv).parse_args(argv)
    # the launcher's own process only: under torchrun its agent ends the ranks (a rank blocked in a
    # collective could not run a Python handler)
    handles_sigterm = threading.current_thread() is threading.main_thread() and not (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ)
    previous: Any = signal.signal(signal.SIGTERM, _terminated) if handles_sigterm else None
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt as e:
        print(f"torchrec-fusion: {'terminated' if isinstance(e, Terminated) else 'interrupted'}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except USER_ERRORS as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"torchrec-fusion: error: {message}", file=sys.stderr)
        return 2
    finally:
        if handles_sigterm:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
