"""``torchrec-fusion export``: a run's sharded checkpoint gathered into one inference model."""

import argparse

from torchrec_fusion.commands.base import Command
from torchrec_fusion.commands.runs import run_arguments

QUANT_CHOICES = ("fp16", "int8", "int4")  # serving.quantize.QUANT_DTYPES, named here without importing torch


class Export(Command):
    help = "gather a run's sharded checkpoint into a single-process inference model"
    outputs = {"--to": "dir"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        run_arguments(parser, world_size=False)
        parser.add_argument("--to", help="output folder (default OUT/export)")
        parser.add_argument("--quantize", choices=QUANT_CHOICES,
                            help="store the embedding tables quantized by TorchRec's inference quantization: fp16, "
                                 "or row-wise int8 / int4 (default: fp32)")
        parser.add_argument("--quantize-table", action="append", default=[], metavar="TABLE=DTYPE",
                            help="another dtype for one table (by table or feature name, e.g. item=int4); "
                                 "repeatable, needs --quantize")

    def run(self, args: argparse.Namespace) -> int:
        from torchrec_fusion.serving import export_run
        from torchrec_fusion.serving.quantize import parse_table_dtypes

        out = export_run(args.run, args.to, args.checkpoint, allow_plugins=args.allow_plugins,
                         quantize=args.quantize, table_dtypes=parse_table_dtypes(args.quantize_table))
        print(f"exported: {out}")
        return 0
