"""What the commands on a finished run's checkpoint (evaluate, recommend, export, ...) share: their flags."""

import argparse


def run_arguments(parser: argparse.ArgumentParser, world_size: bool = True) -> None:
    parser.add_argument("--run", required=True, help="the run's output folder (train --output-dir)")
    parser.add_argument("--checkpoint", help="a checkpoint folder, or best (the best epoch of --early-stopping) "
                                             "or latest (default: the run's latest)")
    parser.add_argument("--allow-plugins", action="store_true",
                        help="import the plugin modules the run's config.yaml names (plugins:); without it such a "
                             "run is refused, since importing a module runs its code")
    if world_size:
        parser.add_argument("--world-size", type=int, default=1,
                            help="local processes; the checkpoint is resharded")
        parser.add_argument("--data-dir", help="where the run's data now lies, if it moved")
