"""MLflow registry for semlayout: log runs, register gated versions, resolve `models:/` URIs,
and the release manager's approve / reject / rollback with an audit trail.

`Registry(tracking_uri)` is the API (URI checked once, one MLflow client); the package's
modules:

- `tracking`     tracking URIs, the reachability check, readable MLflow errors;
- `run_logging`  what a training run logs (params, metrics, the checkpoint as a pyfunc model);
- `audit_tags`   aliases, decision and audit tags, version summaries (no MLflow calls);
- `model_cache`  registered checkpoints downloaded once into the local cache;
- `lookups`      `RegistryReader`: lookups, champion, list / show, `models:/` -> folder;
- `release`      `Registry`: logging runs, registration, approve / reject / rollback;

mlflow is imported inside the methods, so importing this package is cheap.
"""

from semlayout.registry.audit_tags import ALIASES, CHALLENGER, CHAMPION, PREVIOUS
from semlayout.registry.lookups import RegistryReader
from semlayout.registry.release import Registry
from semlayout.registry.run_logging import config_hash, flatten_numbers
from semlayout.registry.tracking import check_tracking_uri, default_tracking_uri

__all__ = [
    "ALIASES",
    "CHALLENGER",
    "CHAMPION",
    "PREVIOUS",
    "Registry",
    "RegistryReader",
    "check_tracking_uri",
    "config_hash",
    "default_tracking_uri",
    "flatten_numbers",
]
