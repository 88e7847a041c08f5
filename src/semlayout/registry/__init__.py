"""MLflow registry for semlayout: log runs, register gated versions, resolve `models:/` URIs,
and the release manager's approve / reject / rollback with an audit trail.

mlflow is imported inside the functions, so importing this package is cheap.
"""

from semlayout.registry.tracking import (
    check_tracking_uri,
    config_hash,
    default_tracking_uri,
    flatten_numbers,
    log_training_run,
)
from semlayout.registry.versions import (
    ALIASES,
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    approve,
    champion_metrics,
    champion_version,
    list_models,
    register_version,
    reject,
    resolve_model_uri,
    rollback,
    show,
)

__all__ = [
    "ALIASES",
    "CHALLENGER",
    "CHAMPION",
    "PREVIOUS",
    "approve",
    "champion_metrics",
    "champion_version",
    "check_tracking_uri",
    "config_hash",
    "default_tracking_uri",
    "flatten_numbers",
    "list_models",
    "log_training_run",
    "register_version",
    "reject",
    "resolve_model_uri",
    "rollback",
    "show",
]
