"""`semlayout registry ...`: the release manager's view of the MLflow registry.

list / show / approve / reject / rollback. The tracking URI comes from
`--tracking-uri`, else `MLFLOW_TRACKING_URI`, else `sqlite:///$PWD/outputs/mlflow/mlflow.db`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from semlayout.directions import DIRECTIONS
from semlayout.errors import SemlayoutError

TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
        "sqlite:///$PWD/outputs/mlflow/mlflow.db)",
    ),
]
ByOpt = Annotated[str, typer.Option("--by", help="who decides (recorded in the audit trail)")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="why (recorded in the audit trail)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]
DryRunOpt = Annotated[
    bool,
    typer.Option("--dry-run", help="check everything and say what would change; change nothing"),
]

group = typer.Typer(
    help="MLflow model registry: list, show, compare, approve, reject, rollback.",
    no_args_is_help=True,
)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


@group.command("list")
def list_cmd(tracking_uri: TrackingOpt = None, as_json: JsonOpt = False) -> None:
    """Registered models with their champion, challenger and previous champion."""
    from semlayout.registry import Registry

    rows = Registry(tracking_uri).list_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no registered models")
        return
    header = ("name", "versions", "latest", "champion", "challenger", "previous-champion")
    table = [header] + [
        (
            r["name"],
            r["versions"],
            r["latest"],
            r["champion"],
            r["challenger"],
            r["previous_champion"],
        )
        for r in rows
    ]
    widths = [max(len(_fmt(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        typer.echo("  ".join(_fmt(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _echo_audit(log: list[dict[str, Any]], indent: str = "  ") -> None:
    if not log:
        typer.echo(f"{indent}(empty)")
    for e in log:
        v = e.get("version")
        extra = f" (from {e['from_version']})" if e.get("from_version") else ""
        typer.echo(
            f"{indent}{e.get('at', '?')}  {e.get('action', '?'):<11} v{v}{extra}  "
            f"by {e.get('by', '?')}: {e.get('reason', '')}"
        )


# the rows `registry show` prints per direction: (key, higher is better); all of them: --json
_SHOWN = {
    "sem2layout": (("ssim", True), ("iou", True), ("l1", False), ("epe_px", False)),
    "layout2sem": (("ssim", True), ("ceiling.ssim", True), ("ssim_vs_clean", True), ("l1", False)),
}


def _echo_metrics(info: dict[str, Any]) -> None:
    mine, champ = info.get("metrics") or {}, info.get("champion_metrics") or {}
    basis = info.get("champion_basis")
    champ_label = f"champion v{info['champion']}" if champ else "champion"
    typer.echo(f"metrics:{'':<24}{'this version':>14}{champ_label:>16}{'delta':>10}")
    for direction in DIRECTIONS:
        a, b = mine.get(direction) or {}, champ.get(direction) or {}
        for key, higher in _SHOWN[direction]:
            va, vb = a.get(key), b.get(key)
            if va is None and vb is None:
                continue
            delta = va - vb if isinstance(va, float) and isinstance(vb, float) else None
            mark = ""
            if delta is not None and abs(delta) >= 5e-4 and not key.startswith("ceiling"):
                mark = "  better" if (delta > 0) == higher else "  worse"
            typer.echo(
                f"  {direction + '.' + key:<30}{_fmt(va):>14}{_fmt(vb):>16}"
                f"{(f'{delta:+.4f}' if delta is not None else '-'):>10}{mark}"
            )
    if basis == "same_pairs":
        typer.echo(f"  (champion v{info['champion']} scored on this version's test pairs, as the "
                   "gate judged it)")  # fmt: skip
    elif basis == "own_test_split":
        typer.echo(
            f"  WARNING: champion v{info['champion']}'s numbers are from its own test split, not "
            "this version's pairs; they are not comparable. Score both on the same pairs: "
            f"semlayout registry compare {info['name']} {info['champion']} {info['version']}"
        )
    typer.echo("  (better / worse: direction only, no noise estimate; all metrics: --json)")


def _echo_adaptation(info: dict[str, Any]) -> None:
    """What the version was adapted to: polarities, tool / layer profiles, per-profile metrics
    (`registry.profile_tags`)."""
    typer.echo(f"polarities: {', '.join(info.get('polarities') or []) or '+1'}")
    typer.echo(f"profiles: {', '.join(info.get('profiles') or []) or 'none (shared network)'}")
    if info.get("adapted_profile"):
        typer.echo(f"adapted profile: {info['adapted_profile']}")
    for name, block in sorted((info.get("profile_metrics") or {}).items()):
        n = f" ({block['n_pairs']} reviewed test pairs)" if block.get("n_pairs") else ""
        typer.echo(f"profile {name}{n}:{'':<6}{'this version':>14}{'champion':>12}{'delta':>10}")
        for key, va in sorted(block.get("metrics", {}).items()):
            vb = block.get("champion", {}).get(key)
            delta = f"{va - vb:+.4f}" if vb is not None else "-"
            typer.echo(f"  {key:<28}{_fmt(va):>14}{_fmt(vb):>12}{delta:>10}")


@group.command("show")
def show_cmd(
    name: Annotated[str, typer.Argument(help="registered model name")],
    version: Annotated[
        str | None, typer.Argument(help="version number (default: the whole model)")
    ] = None,
    tracking_uri: TrackingOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A model's versions and audit trail, or one version beside the champion."""
    from semlayout.registry import Registry

    info = Registry(tracking_uri).show(name, version)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    if version is None:
        aliases = ", ".join(f"{k}=v{v}" for k, v in sorted(info["aliases"].items())) or "none"
        typer.echo(f"model {info['name']}  aliases: {aliases}")
        for v in info["versions"]:
            gate = {True: "passed", False: "FAILED", None: "-"}[v["gate_passed"]]
            tags = f" [{', '.join(v['aliases'])}]" if v["aliases"] else ""
            typer.echo(
                f"  v{v['version']:<4} gate {gate:<7} {v['status']:<12} {v['created'] or ''}{tags}"
            )
        for v in info["versions"]:
            if "champion" in v["aliases"] and v["status"] != "approved":
                typer.echo(
                    f"WARNING: champion v{v['version']} has no approval record: the alias was "
                    "moved outside `semlayout registry approve` (e.g. in the MLflow UI)"
                )
        typer.echo("audit trail:")
        _echo_audit(info["audit_log"])
        return
    tags = f" [{', '.join(info['aliases'])}]" if info["aliases"] else ""
    typer.echo(f"model {info['name']} version {info['version']}{tags}  status: {info['status']}")
    typer.echo(f"  uri {info['model_uri']}  run {info['run_id']}")
    gate_info = info.get("gate") or {}
    verdict = {True: "PASSED", False: "FAILED", None: "unknown"}[info["gate_passed"]]
    typer.echo(f"gate: {verdict}")
    for reason in gate_info.get("reasons", []):
        typer.echo(f"  - {reason}")
    _echo_metrics(info)
    _echo_adaptation(info.get("adaptation") or {})
    typer.echo("lineage:")
    for k, v in sorted(info["lineage"].items()):
        typer.echo(f"  {k}: {v}")
    if info["decision"]:
        typer.echo("decision:")
        for k, v in info["decision"].items():
            typer.echo(f"  {k}: {v}")
    typer.echo("audit trail:")
    _echo_audit(info["audit_log"])


@group.command("approve")
def approve_cmd(
    name: Annotated[str, typer.Argument(help="registered model name")],
    version: Annotated[str, typer.Argument(help="version to promote to champion")],
    by: ByOpt,
    reason: ReasonOpt,
    tracking_uri: TrackingOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Promote a gated version to champion (the old champion becomes previous-champion)."""
    from semlayout.registry import Registry

    registry = Registry(tracking_uri)
    r = registry.approve(name, version, by, reason, dry_run=dry_run)
    page = registry.comparison(name, r["champion"])
    if as_json:
        typer.echo(json.dumps({**r, "comparison": page}, indent=2))
        return
    prev = f" (previous champion v{r['previous_champion']})" if r["previous_champion"] else ""
    verb = "would become" if dry_run else "is now"
    typer.echo(f"{_dry(dry_run)}{name}: v{r['champion']} {verb} champion{prev}")
    _echo_comparison_page(name, r["champion"], r["previous_champion"], page)


@group.command("reject")
def reject_cmd(
    name: Annotated[str, typer.Argument(help="registered model name")],
    version: Annotated[str, typer.Argument(help="version to reject")],
    by: ByOpt,
    reason: ReasonOpt,
    tracking_uri: TrackingOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Reject a version (removes the challenger alias if it points there)."""
    from semlayout.registry import Registry

    r = Registry(tracking_uri).reject(name, version, by, reason, dry_run=dry_run)
    if as_json:
        typer.echo(json.dumps(r, indent=2))
        return
    typer.echo(
        f"{_dry(dry_run)}{name}: v{r['rejected']} {'would be ' if dry_run else ''}rejected"
        + (" (challenger alias removed)" if r["challenger_removed"] else "")
    )


@group.command("rollback")
def rollback_cmd(
    name: Annotated[str, typer.Argument(help="registered model name")],
    by: ByOpt,
    reason: ReasonOpt,
    tracking_uri: TrackingOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Make the previous champion the champion again."""
    from semlayout.registry import Registry

    r = Registry(tracking_uri).rollback(name, by, reason, dry_run=dry_run)
    if as_json:
        typer.echo(json.dumps(r, indent=2))
        return
    verb = ("would roll back", "would be") if dry_run else ("rolled back", "is")
    typer.echo(
        f"{_dry(dry_run)}{name}: {verb[0]} v{r['rolled_back']}; v{r['champion']} {verb[1]} "
        "champion again"
    )


def _dry(dry_run: bool) -> str:
    return "dry run, nothing changed: " if dry_run else ""


@group.command("compare")
def compare_cmd(
    name: Annotated[str, typer.Argument(help="registered model name")],
    a: Annotated[str, typer.Argument(help="version A (e.g. the champion)")],
    b: Annotated[str, typer.Argument(help="version B (e.g. the challenger)")],
    html: Annotated[
        Path | None, typer.Option("--html", help="write the comparison page (HTML) here")
    ] = None,
    data: Annotated[
        list[Path],
        typer.Option(
            "--data",
            help="score on this shard folder's test split instead of the versions' own "
            "test splits (repeatable)",
        ),
    ] = [],  # noqa: B006
    max_samples: Annotated[
        int | None, typer.Option("--max-samples", min=1, help="score a stratified subset")
    ] = None,
    backend: Annotated[str, typer.Option("--backend", help="eager, bf16 or onnx")] = "eager",
    tracking_uri: TrackingOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score two versions on the same pairs: deltas beyond noise, per family, images, gate."""
    from semlayout.comparison import compare_versions
    from semlayout.comparison_report import json_ready, write_comparison_html
    from semlayout.registry import Registry

    if html is not None and html.is_dir():
        raise SemlayoutError(f"--html {html} is a folder; expected a file path to write")
    result = compare_versions(
        Registry(tracking_uri), name, a, b, data=data or None, max_samples=max_samples,
        backend=backend,
    )  # fmt: skip
    if html is not None:
        write_comparison_html(html, result)
    if as_json:
        typer.echo(json.dumps(json_ready(result), indent=2, default=str))
        return
    _echo_comparison(result)
    if html is not None:
        typer.echo(f"page: {html}")


def _echo_comparison(result: dict[str, Any]) -> None:
    va, vb = result["a"]["version"], result["b"]["version"]
    typer.echo(("WARNING: " if result["same_data"] is False else "") + result["data_note"])
    marks = {"better": "better", "worse": "WORSE", "within noise": "~ noise", "n/a": "-"}
    for s in result["sets"]:
        head = f"{s['label']} ({s['n']} pairs):"
        typer.echo(
            f"{head:<32}{'v' + str(va):>10}{'v' + str(vb):>10}{'delta':>10}{'noise':>9}  verdict"
        )
        for direction in DIRECTIONS:
            for key, row in s[direction].items():
                noise = f"±{row['noise']:.4f}" if row["noise"] is not None else "-"
                delta = f"{row['delta']:+.4f}" if row["delta"] is not None else "-"
                typer.echo(
                    f"  {direction + '.' + key:<30}{_fmt(row['a']):>10}{_fmt(row['b']):>10}"
                    f"{delta:>10}{noise:>9}  {marks.get(row['verdict'], row['verdict'])}"
                )
    judged = result["b_judged_against_a"]
    verdict = "PASS" if judged["passed"] else "FAIL"
    typer.echo(f"gate, v{vb} judged against v{va} on the {judged['on']} pairs: {verdict}")
    for reason in judged["reasons"]:
        typer.echo(f"  - {reason}")


def _echo_comparison_page(
    name: str, version: int, against: int | None, page: dict[str, Any] | None
) -> None:
    """Where the page comparing `version` with the champion it replaces is (or how to make it)."""
    if page is not None:
        where = page["path"] or page["uri"]
        typer.echo(f"comparison with v{page['against']} on the same pairs: {where}")
        if page["path"] is None:
            typer.echo(f"  (download: mlflow artifacts download -u {page['uri']} -d .)")
    elif against is not None:
        typer.echo(
            f"no comparison page with v{against}: `semlayout registry compare {name} {against} "
            f"{version} --html compare.html` makes one"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="registry")
