"""`mlmkit serve`: the Inference-API-compatible HTTP server and its playground page."""

from __future__ import annotations

import argparse

from mlmkit.cli.flags import add_command, add_model_argument, add_settings_flags, settings_from
from mlmkit.config import ServeConfig
from mlmkit.errors import MlmkitError


def register(sub: argparse._SubParsersAction) -> None:
    s = add_command(sub, "serve")
    add_model_argument(s)
    add_settings_flags(s, ServeConfig, run_mlm=False)


def run(ns: argparse.Namespace, argv: list[str]) -> int:
    cfg = settings_from(ServeConfig, ns)
    try:
        import fastapi  # noqa: F401  (checked here for a one-line error instead of a traceback)
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401

        from mlmkit.serving.app import APP_LIMITS, serve
    except ImportError as e:
        raise MlmkitError(f"serve needs {e.name}: pip install 'mlmkit[serve]'") from None
    from mlmkit.inference.fill import FillMask

    engine = FillMask(ns.model, device=cfg.device, dtype=cfg.dtype, runtime=cfg.runtime,
                      batch_size=cfg.max_batch_size)
    limits = {name: getattr(cfg, name) for name in APP_LIMITS}
    serve(engine, host=cfg.host, port=cfg.port, batching=not cfg.no_batching,
          header_timeout_s=cfg.header_timeout_s, max_connections=cfg.max_connections, **limits)
    return 0
