"""``torchrec-fusion serve``: an exported model behind an HTTP JSON API (score rows, recommend, health, info)."""

import argparse

from torchrec_fusion.commands.base import Command


class Serve(Command):
    help = "serve an exported model over HTTP: score rows, recommend for a user, health and model info"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--export", required=True, metavar="DIR", help="a folder written by export")
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
        parser.add_argument("--port", type=int, default=8000, help="port to listen on")
        parser.add_argument("--no-batching", action="store_true",
                            help="one forward per request (default: concurrent requests share forwards)")
        parser.add_argument("--deadline-ms", type=float, default=2.0,
                            help="how long a request waits for others to join its forward")
        parser.add_argument("--max-batch-rows", type=int, default=4096, help="most rows of one batched forward")
        parser.add_argument("--max-rows", type=int, default=1024, help="most rows of one /score request")
        parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body")
        parser.add_argument("--data-dir", help="where the run's data now lies (for /recommend), if it moved")
        parser.add_argument("--threads", type=int, help="intra-op threads of the forward (default: torch's)")

    def run(self, args: argparse.Namespace) -> int:
        import torch
        import uvicorn

        from torchrec_fusion.serving.server import ServeOptions, create_app

        for name in ("deadline_ms", "max_batch_rows", "max_rows", "max_body_bytes"):
            if getattr(args, name) < (0 if name == "deadline_ms" else 1):
                raise ValueError(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'deadline_ms' else '>= 1'}")
        if args.threads:
            torch.set_num_threads(args.threads)
        options = ServeOptions(args.max_rows, args.max_body_bytes, not args.no_batching, args.deadline_ms,
                               args.max_batch_rows)
        app = create_app(args.export, options, args.data_dir)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return 0
