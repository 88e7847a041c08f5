"""Submit and schedule the compiled pipelines on a Kubeflow Pipelines server (`kfp.Client`)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from semlayout.errors import SemlayoutError

# KFP recurring runs take six cron fields, seconds first: "0 0 2 * * *" = every day at 02:00:00.
_FIELD_RANGES = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)
_NAMES = {
    4: ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
    5: ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
}


def _check_value(text: str, i: int, expr: str) -> int:
    name, lo, hi = _FIELD_RANGES[i]
    up = text.upper()
    if i in _NAMES and up in _NAMES[i]:
        return _NAMES[i].index(up) + (1 if i == 4 else 0)
    if not text.isdigit():
        raise SemlayoutError(
            f"cron '{expr}': {name} field has '{text}'; expected a number {lo}-{hi}"
        )
    v = int(text)
    if not lo <= v <= hi:
        raise SemlayoutError(f"cron '{expr}': {name} {v} is outside {lo}-{hi}")
    return v


def validate_cron(expr: str) -> str:
    """Check a six-field cron expression (seconds first); returns it normalised (single spaces)."""
    fields = expr.split()
    if len(fields) != 6:
        hint = (
            " (KFP wants seconds first: prefix '0 ' to a five-field cron)"
            if len(fields) == 5
            else ""
        )
        raise SemlayoutError(
            f"cron '{expr}' has {len(fields)} fields; expected 6: "
            f"second minute hour day-of-month month day-of-week{hint}"
        )
    for i, field in enumerate(fields):
        for part in field.split(","):
            base, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise SemlayoutError(f"cron '{expr}': step '/{step}' must be a positive number")
            if base in ("*", "?"):
                if base == "?" and i not in (3, 5):
                    raise SemlayoutError(
                        f"cron '{expr}': '?' is only allowed for day of month / day of week"
                    )
                continue
            lo_text, dash, hi_text = base.partition("-")
            lo = _check_value(lo_text, i, expr)
            if dash and _check_value(hi_text, i, expr) < lo:
                raise SemlayoutError(f"cron '{expr}': range '{base}' runs backwards")
    return " ".join(fields)


def _client(host: str) -> Any:
    import kfp

    if not host.startswith(("http://", "https://")):
        raise SemlayoutError(
            f"--kfp-host '{host}': expected the KFP API URL, e.g. http://ml-pipeline.kubeflow:8888"
        )
    import warnings

    with _api_errors(host), warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # "only works with KFP >= 2.0.0-beta.2": we know
        return kfp.Client(host=host)


@contextlib.contextmanager
def _api_errors(host: str) -> Iterator[None]:
    """A wrong or unreachable host is a user mistake: one line, not a urllib3 traceback."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except HTTPError as err:
        reason = getattr(err, "reason", None) or err
        raise SemlayoutError(f"KFP API at {host} is unreachable: {reason}") from None
    except ApiException as err:
        raise SemlayoutError(
            f"KFP API at {host} refused the request: {err.status} {err.reason}"
        ) from None


def check_arguments(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Refuse parameter names the pipeline does not have (before any network call)."""
    from semlayout_pipelines.compile import build

    known = set(build(name).component_spec.inputs or {})
    unknown = sorted(set(arguments) - known)
    if unknown:
        raise SemlayoutError(
            f"pipeline '{name}' has no parameter(s) {unknown}; it takes {sorted(known)}"
        )
    return arguments


def _package(name: str, image: str | None) -> Path:
    from semlayout_pipelines.compile import compile_pipelines

    out = Path(tempfile.mkdtemp(prefix="semlayout-kfp-"))
    return compile_pipelines(out, (name,), image=image)[name]


def plan(host: str, name: str, arguments: dict[str, Any], image: str | None) -> dict[str, Any]:
    """What `submit` / `schedule` would send, checked and compiled, with nothing sent: the
    host's form, the arguments against the pipeline's parameters, the package."""
    if not host.startswith(("http://", "https://")):
        raise SemlayoutError(
            f"--kfp-host '{host}': expected the KFP API URL, e.g. http://ml-pipeline.kubeflow:8888"
        )
    check_arguments(name, arguments)
    package = _package(name, image)
    return {
        "dry_run": True,
        "kfp_host": host,
        "pipeline": name,
        "arguments": arguments,
        "package": str(package),
    }


def submit(
    host: str,
    name: str,
    arguments: dict[str, Any],
    experiment: str = "semlayout",
    image: str | None = None,
    run_name: str | None = None,
    service_account: str | None = "semlayout-pipeline",
) -> str:
    """Create one run; returns its run id."""
    check_arguments(name, arguments)
    package = _package(name, image)
    client = _client(host)
    with _api_errors(host):
        run = client.create_run_from_pipeline_package(
            str(package),
            arguments=arguments,
            run_name=run_name,
            experiment_name=experiment,
            enable_caching=False,
            service_account=service_account,
        )
    return run.run_id


def schedule(
    host: str,
    name: str,
    cron: str,
    arguments: dict[str, Any],
    experiment: str = "semlayout",
    image: str | None = None,
    job_name: str | None = None,
    max_concurrency: int = 1,
    service_account: str | None = "semlayout-pipeline",
) -> str:
    """Create a recurring run (cron, six fields, seconds first); returns its id."""
    cron = validate_cron(cron)
    check_arguments(name, arguments)
    package = _package(name, image)
    client = _client(host)
    with _api_errors(host):
        exp = client.create_experiment(name=experiment)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=job_name or f"semlayout-{name}",
            cron_expression=cron,
            pipeline_package_path=str(package),
            params=arguments,
            max_concurrency=max_concurrency,
            enable_caching=False,
            service_account=service_account,
        )
    return job.recurring_run_id
