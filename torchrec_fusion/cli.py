"""The ``torchrec-fusion`` command line: a table of commands (torchrec_fusion.commands) behind one
error handler."""

import argparse
import sys
from typing import List, Optional

from torchrec_fusion.commands import COMMANDS

# errors a user can act on: printed as one line, exit code 2 (anything else is a bug: a traceback)
USER_ERRORS = (ValueError, OSError, KeyError, RuntimeError, FloatingPointError, TypeError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchrec-fusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except USER_ERRORS as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"torchrec-fusion: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
