"""The engine configuration a command runs with: options, config file, environment, state directory."""

from __future__ import annotations

import argparse
import os
from typing import Any


def engine_config(args: argparse.Namespace, **extra: Any) -> Any:
    from ..config import EngineConfig

    base = EngineConfig.from_file(args.config) if args.config else EngineConfig()
    if getattr(args, "state_dir", None):
        from .._engine.journal import state_defaults

        base = state_defaults(base, args.state_dir)
    base = EngineConfig.from_env(base)
    changes = {
        "model": args.model,
        "reader_model": args.reader_model,
        "reader_base_url": getattr(args, "reader_base_url", None),
        "devices": args.devices,
        "measure": args.measure,
        "relevance": [x.strip() for x in args.relevance.split(",") if x.strip()] if args.relevance else None,
        "embedder": getattr(args, "embedder", None),
        "segment_tokens": args.segment_tokens,
        "segment_overlap": args.segment_overlap,
        "context_tokens": args.context_tokens,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "backend": getattr(args, "backend", None),
        "ray_address": getattr(args, "ray_address", None),
        "workers": getattr(args, "workers", None),
        "allow_download": args.allow_download,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    changes.update(extra)
    return base.replace(**changes) if changes else base


def state_settings(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "state_dir", None):
        out["state_dir"] = args.state_dir
    if getattr(args, "fsync", None):
        out["fsync"] = args.fsync
    return out


def require_state(state_dir: str) -> None:
    from ..errors import InputError
    from ..persistence import read_meta

    if read_meta(state_dir) is None:
        raise InputError(f"no xl3m-stream state in {state_dir}: run `xl3m-stream ingest PATH --state-dir DIR` first")


def check_input_file(path: str) -> None:
    from ..errors import InputError

    if not os.path.exists(path):
        raise InputError(f"input file not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"input is a directory, not a file: {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"input file is not readable: {path}")
