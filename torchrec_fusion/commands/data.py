"""``torchrec-fusion data``: download and list the official MovieLens archives."""

import argparse

from torchrec_fusion.commands.base import Command


class Data(Command):
    help = "download the official MovieLens archives"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from torchrec_fusion.data.download import ARCHIVES, DEFAULT_BASE_URL

        actions = parser.add_subparsers(dest="data_command", required=True)
        dl = actions.add_parser("download", help="download, verify (md5, sha256) and unpack one MovieLens archive",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        dl.add_argument("dataset", choices=sorted(ARCHIVES))
        dl.add_argument("--to", default="data", help="parent folder; the files land in TO/ml-100k, TO/ml-1m, ...")
        dl.add_argument("--base-url", default=DEFAULT_BASE_URL, help="where the archives are (GroupLens or a mirror)")
        dl.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait on the connection and each read")
        dl.add_argument("--md5", help="expected md5 instead of the official one, for a mirror's own archive "
                                      "(skips the sha256 check)")
        dl.add_argument("--keep-archive", action="store_true", help="keep the .zip after unpacking")
        dl.add_argument("--force", action="store_true", help="download again and replace a complete folder")
        actions.add_parser("list", help="the known archives, their sizes and checksums")

    def run(self, args: argparse.Namespace) -> int:
        from torchrec_fusion.data.download import data_command

        return data_command(args)
