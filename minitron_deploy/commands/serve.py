"""`minitron-deploy serve triton --repo REPO`: run a local Triton server until Ctrl-C."""

from __future__ import annotations

import argparse

from minitron_deploy.console import info, print_json
from minitron_deploy.triton.server import TritonServer

NAME = "serve"
HELP = "Serve a model repository (triton: the tritonserver bundled in nvidia-pytriton)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    t = sub.add_parser("triton", help="start tritonserver on 127.0.0.1, wait ready, serve")
    t.add_argument("--repo", required=True, help="Triton model repository")
    t.add_argument("--http-port", type=int, default=None, help="HTTP port (default: a free one)")
    t.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: a free one)")
    t.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for ready")
    t.add_argument("--log", default=None, help="server log file (default: a temporary file)")
    t.add_argument("--json", action="store_true", help="print ports and pid as one JSON line")


def run(args: argparse.Namespace) -> int:
    import signal
    import time

    server = TritonServer(
        args.repo,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        ready_timeout_s=args.ready_timeout,
        log_path=args.log,
    )

    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM (e.g. a supervisor) stops as cleanly as Ctrl-C

    signal.signal(signal.SIGTERM, _term)
    with server:
        info(
            f"Triton ready: http://{server.http_url} grpc {server.grpc_url} pid {server.pid} "
            f"models {server.models}; Ctrl-C stops it"
        )
        if args.json:
            print_json(server.info())
        try:
            while server.proc is not None and server.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            info("stopping Triton")
            return 0
    info(f"tritonserver exited on its own (code {server.proc.returncode if server.proc else '?'})")
    return 1
