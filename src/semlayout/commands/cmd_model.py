"""`semlayout predict` and `semlayout evaluate`: run a checkpoint on images or on a shard split."""

from __future__ import annotations

from pathlib import Path

import typer

from semlayout.errors import SemlayoutError
from semlayout.tiling import MAX_FIELD_SIDE


def _list_pngs(in_dir: Path) -> list[Path]:
    if not in_dir.is_dir():
        raise SemlayoutError(f"input folder not found: {in_dir}")
    files = sorted(p for p in in_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise SemlayoutError(f"{in_dir} holds no .png images to translate")
    return files


PREDICTIONS_FILE = "predictions.csv"
# DESIGN.md's predictions.csv starts id,direction,polarity; the confidence columns
# (confidence, predicted_iou | predicted_ssim) come after polarity, the margin and source last
PREDICTION_COLUMNS = ("id", "direction", "polarity", "polarity_margin", "polarity_source")


def predictions_csv(rows: list[dict[str, str]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(PREDICTION_COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def prediction_row(image_id: str, direction: str, decision: object) -> dict[str, str]:
    """One predictions.csv row: polarity +1 / -1, the auto margin (empty unless auto)."""
    from semlayout.polarity_auto import PolarityDecision

    assert isinstance(decision, PolarityDecision)
    margin = "" if decision.margin is None else f"{decision.margin:.4f}"
    return {
        "id": image_id,
        "direction": direction,
        "polarity": f"{decision.polarity:+d}",
        "polarity_margin": margin,
        "polarity_source": decision.source,
    }


def predict(
    in_dir: Path = typer.Argument(..., help="folder of 8-bit grayscale PNGs"),
    model: str = typer.Option(..., "--model", "-m", help="checkpoint folder or models:/NAME@ALIAS"),
    direction: str = typer.Option(..., "--direction", "-d", help="sem2layout or layout2sem"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (written atomically)"),
    backend: str = typer.Option("eager", help="eager, bf16 or onnx"),
    binarize: bool = typer.Option(
        False,
        "--binarize",
        help="sem2layout: write the drawn layout, {0, 255} (threshold + Manhattan fit)",
    ),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow URI for models:/ URIs"
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="images per forward pass"),
    polarity: str = typer.Option(
        "auto",
        "--polarity",
        help="which side of the SEM contrast is the pattern: auto (decided per image), "
        "bright or dark",
    ),
    layer_polarity: str | None = typer.Option(
        None,
        "--layer-polarity",
        help="the layer's polarity when known (bright or dark): auto leans toward it",
    ),
    max_field_side: int = typer.Option(
        MAX_FIELD_SIDE,
        "--max-field-side",
        min=250,
        help="largest side (px) of a field: an image larger than one window is translated "
        "by overlapping tiles at its own scale",
    ),
) -> None:
    """Translate every PNG in IN_DIR to a PNG of the same name and size in OUT, and write
    OUT/predictions.csv (id,direction,polarity,polarity_margin,polarity_source).

    An image larger than one window (a whole SEM field, a layout clip) is cut into
    overlapping 250 px tiles, translated and blended without seams."""
    import cv2

    from semlayout.atomic import atomic_dir, check_not_over_inputs
    from semlayout.data.pairs import read_gray8
    from semlayout.directions import Direction
    from semlayout.inference import Translator
    from semlayout.polarity import PolarityChoice, parse_choice
    from semlayout.tiling import check_field, is_field

    Direction.parse(direction)
    choice = parse_choice(polarity, "--polarity")
    prior = None
    if layer_polarity is not None:
        layer = parse_choice(layer_polarity, "--layer-polarity")
        if layer is PolarityChoice.auto:
            raise SemlayoutError("--layer-polarity must be bright or dark (or leave it out)")
        prior = layer.value_or_none
    if binarize and direction != "sem2layout":
        raise SemlayoutError("--binarize applies to --direction sem2layout only")
    files = _list_pngs(in_dir)
    check_not_over_inputs(out, input_folder=in_dir, model=model)
    images = [read_gray8(p) for p in files]  # refuses 16-bit / RGB naming the file, before any work
    for path, img in zip(files, images, strict=True):  # and fields over the limit
        if is_field(img.shape):
            try:
                check_field(img, max_field_side)
            except SemlayoutError as err:
                raise SemlayoutError(f"{path.name}: {err}") from None
    tr = Translator.load(model, backend=backend, tracking_uri=tracking_uri)
    tr.fixed_polarity(direction, choice, prior)  # a polarity the model never learned: refused now
    rows: list[dict[str, str]] = []
    with atomic_dir(out) as tmp:
        for start in range(0, len(files), batch_size):
            done = tr.translate_detailed(
                direction,
                images[start : start + batch_size],
                binarize=binarize,
                batch_size=batch_size,
                polarity=choice,
                prior=prior,
                max_field_side=max_field_side,
            )
            for path, t in zip(files[start : start + batch_size], done, strict=True):
                ok, buf = cv2.imencode(".png", t.output)
                if not ok:
                    raise RuntimeError(f"PNG encoding failed for {path.name}")
                (tmp / path.name).write_bytes(buf.tobytes())
                rows.append(prediction_row(path.stem, direction, t.decision))
        (tmp / PREDICTIONS_FILE).write_text(predictions_csv(rows))
    n_dark = sum(r["polarity"] == "-1" for r in rows)
    print(
        f"translated {len(files)} image(s) {direction} with {tr.source} ({backend}) -> {out} "
        f"(polarity {polarity}: {len(rows) - n_dark} bright, {n_dark} dark)"
    )


def _find_history(model: str) -> Path | None:
    """history.json beside a local checkpoint (RUN/final/) or in its run folder (RUN/)."""
    from semlayout.model_uri import ModelUri

    if ModelUri.is_model_uri(model):
        return None
    p = Path(model)
    for cand in (p / "history.json", p.parent / "history.json", p.parent.parent / "history.json"):
        if cand.is_file():
            return cand
    return None


def evaluate(
    model: str = typer.Option(..., "--model", "-m", help="checkpoint folder or models:/NAME@ALIAS"),
    data: Path = typer.Option(..., "--data", help="shard folder (from `semlayout shard`)"),
    split: str = typer.Option("test", help="train, val or test"),
    out: Path = typer.Option(..., "--out", "-o", help="metrics.json to write"),
    report: Path | None = typer.Option(
        None, "--report", help="also write a self-contained HTML report"
    ),
    backend: str = typer.Option("eager", help="eager, bf16 or onnx"),
    max_samples: int | None = typer.Option(
        None, "--max-samples", min=1, help="evaluate a stratified subset"
    ),
    history: Path | None = typer.Option(
        None,
        "--history",
        help="training history.json for the report's curves (default: found beside the model)",
    ),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow URI for models:/ URIs"
    ),
) -> None:
    """Score both directions on a shard split (per family, with baselines) -> metrics.json \
[+ report]."""
    from semlayout.evaluation import evaluate_model, write_evaluation

    if history is not None and not history.is_file():
        raise SemlayoutError(f"--history {history} not found")
    result = evaluate_model(
        model,
        data,
        split=split,
        backend=backend,
        max_samples=max_samples,
        tracking_uri=tracking_uri,
    )
    hist = history or _find_history(model)
    curves = None
    if report is not None and hist is not None:
        import json

        try:
            curves = json.loads(hist.read_text())
        except json.JSONDecodeError as err:
            raise SemlayoutError(f"{hist} is not valid JSON: {err}") from None
    write_evaluation(result, out, report=report, curves=curves)
    s2l, l2s = result["sem2layout"], result["layout2sem"]

    def f(v: object) -> str:
        return "-" if v is None else f"{v:.4f}"

    print(f"{result['n']} pairs ({split}) model {result['model']}")
    print(
        f"sem2layout  ssim {f(s2l['ssim'])}  iou {f(s2l['iou'])}  l1 {f(s2l['l1'])}  "
        f"epe {f(s2l['epe_px'])} px   | otsu baseline ssim {f(s2l['baseline_otsu']['ssim'])} "
        f"iou {f(s2l['baseline_otsu']['iou'])}"
    )
    ceiling = l2s.get("ceiling", {}).get("ssim")
    print(
        f"layout2sem  ssim {f(l2s['ssim'])} (ceiling {f(ceiling)})  "
        f"ssim vs clean {f(l2s.get('ssim_vs_clean'))}  l1 {f(l2s['l1'])}"
    )
    print(f"wrote {out}" + (f" and {report}" if report is not None else ""))


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
    app.command("evaluate")(evaluate)
