"""`semlayout serve`: the HTTP API (FastAPI under uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

_HOST_HELP = "address to listen on (0.0.0.0: every interface)"
_LOG_HELP = "uvicorn log level: critical, error, warning, info, debug"


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    model: str = typer.Option(
        None, "--model", help="checkpoint folder or models:/NAME@ALIAS (env SEMLAYOUT_MODEL)"
    ),
    host: str = typer.Option("127.0.0.1", "--host", help=_HOST_HELP),
    port: int = typer.Option(8000, "--port", help="TCP port to listen on"),
    backend: str = typer.Option(
        None,
        "--backend",
        help="auto (default: the fastest backend whose outputs match eager fp32, measured at "
        "start-up) | eager | bf16 | onnx",
    ),
    reference: Path = typer.Option(
        None,
        "--reference",
        help="drift reference override (SHARDS/reference_stats.json); default: the one "
        "registered with the model version",
    ),
    db: str = typer.Option(
        None,
        "--db",
        help="monitoring store: a SQLite path or a postgresql:// URL (env SEMLAYOUT_MONITOR_DB)",
    ),
    feedback_uri: str = typer.Option(
        None,
        "--feedback-uri",
        "--feedback-dir",
        help="feedback object store for /v1/feedback: a folder or s3://BUCKET/PREFIX "
        "(env SEMLAYOUT_FEEDBACK_URI)",
    ),
    tracking_uri: str = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI for models:/ URIs"
    ),
    poll_interval: float = typer.Option(
        None, "--poll-interval", help="seconds between alias checks; 0 = off"
    ),
    layer_polarity: str = typer.Option(
        None,
        "--layer-polarity",
        help="the served layer's contrast polarity, bright or dark: auto's prior and what the "
        "drift monitor expects",
    ),
    max_field_side: int = typer.Option(
        None,
        "--max-field-side",
        help="largest side (px) of a field translated by overlapping tiles (default 2048)",
    ),
    log_level: str = typer.Option("info", "--log-level", help=_LOG_HELP),
) -> None:
    """Serve both translation directions with drift, health and quality monitoring.

    Tokens come from the environment only: SEMLAYOUT_API_TOKEN (ground truth, feedback) and
    SEMLAYOUT_ADMIN_TOKEN (reload); unset, those endpoints answer 503.
    """
    import os

    import uvicorn
    from pydantic import ValidationError

    from semlayout.errors import validation_error
    from semlayout.serving.app import create_app
    from semlayout.serving.settings import ServeSettings

    given: dict[str, Any] = {
        "model": model,
        "backend": backend,
        "reference": reference,
        "monitor_db": db,
        "feedback_uri": feedback_uri,
        "tracking_uri": tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
        "poll_interval_s": poll_interval,
        "layer_polarity": layer_polarity,
        "max_field_side": max_field_side,
    }
    try:
        settings = ServeSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as err:
        raise validation_error(err, "setting") from None
    engine = _open_before_binding(settings, port)
    uvicorn.run(create_app(settings, engine), host=host, port=port, log_level=log_level, workers=1)


def _open_before_binding(settings: Any, port: int) -> Any:
    """Everything the app opens, checked before binding, so a bad model, registry, store or
    feedback URI is one line and exit 2, not a traceback from inside uvicorn's startup.
    Returns the loaded InferenceEngine."""
    from semlayout.errors import SemlayoutError

    if not settings.model:
        raise SemlayoutError(
            "no model: pass --model (checkpoint folder or models:/NAME@ALIAS) "
            "or set SEMLAYOUT_MODEL"
        )
    if settings.reference is not None and not Path(settings.reference).exists():
        raise SemlayoutError(f"drift reference not found: {settings.reference}")
    if not (1 <= port <= 65535):
        raise SemlayoutError(f"--port {port}: expected 1..65535")
    from semlayout.model_uri import ModelUri

    if ModelUri.is_model_uri(settings.model):
        from semlayout.registry import Registry

        Registry(settings.tracking_uri, create=False)  # a typo must not create a registry
    from semlayout.monitoring.feedback import feedback_uri
    from semlayout.monitoring.store import MonitorStore
    from semlayout.serving.engine import InferenceEngine
    from semlayout.serving.state import drift_options
    from semlayout.storage import open_store

    MonitorStore(settings.monitor_db).close()
    open_store(feedback_uri(settings.feedback_uri))
    engine = InferenceEngine.load(
        settings.model, settings.backend, settings.tracking_uri, drift_options(settings)
    )
    if settings.layer_prior is not None:  # a layer the model never learned: refused now
        engine.current.translator.fixed_polarity("sem2layout", "auto", settings.layer_prior)
    return engine
