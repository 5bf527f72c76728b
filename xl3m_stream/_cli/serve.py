"""``xl3m-stream serve``: named streams over HTTP (see :mod:`xl3m_stream.serve`)."""

from __future__ import annotations

import argparse
import ipaddress
import os
from typing import Any

from .settings import engine_config

API_KEY_ENV = "XL3M_STREAM_API_KEY"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import InputError

    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if not key and not is_loopback(args.host):
        raise InputError(
            f"refusing to serve on {args.host} without an API key: give --api-key KEY (or ${API_KEY_ENV}), "
            "or bind to 127.0.0.1"
        )
    for name, value in (("--max-body", args.max_body), ("--max-streams", args.max_streams)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    try:
        import uvicorn

        from ..serve import ServeSettings, create_app
    except ImportError as exc:
        raise InputError(f"serve needs its extra ({exc.name} is missing): pip install 'xl3m-stream[serve]'") from None

    config = engine_config(args)
    settings = ServeSettings(
        api_key=key,
        max_body=args.max_body,
        feed_timeout=args.feed_timeout,
        max_streams=args.max_streams,
        state_dir=args.root_dir,
    )
    app = create_app(config, settings)
    uv_config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="info" if args.verbose else "warning",
        access_log=bool(args.verbose),
        timeout_graceful_shutdown=args.shutdown_timeout,
        lifespan="on",
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.streams.closing = True  # event streams end, new streams are refused
            super().handle_exit(sig, frame)

    server = Server(uv_config)
    server.run()
    if not server.started:
        raise InputError(f"the server did not start on {args.host}:{args.port} (see the message above)")
    return 0


def add_serve_command(sub: Any, engine_options: Any, seconds: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve named streams over HTTP, with an OpenAI-compatible chat endpoint",
        description="One engine per named stream (created on first use): feed, ask, watch, events (SSE), "
        "Prometheus metrics, and /v1/chat/completions for OpenAI clients. With --state-dir each stream keeps "
        "its state in DIR/<name> and every stream found there is resumed at start.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need a key)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--api-key", metavar="KEY", help=f"require Authorization: Bearer KEY (default ${API_KEY_ENV}, if set)"
    )
    p.add_argument(
        "--state-dir", dest="root_dir", metavar="DIR", help="keep each stream in DIR/<name>; resume those found"
    )
    p.add_argument("--max-streams", type=int, default=16, help="streams held at most (default 16; 429 beyond)")
    p.add_argument(
        "--max-body", type=int, default=8 * 1024 * 1024, help="largest request body in bytes (default 8 MiB; 413)"
    )
    p.add_argument(
        "--feed-timeout",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long a feed waits for room in the scoring queue before 429, nothing taken (default 30)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long in-flight requests may take to finish (default 30)",
    )
    engine_options(p)
    p.set_defaults(func=cmd_serve)
