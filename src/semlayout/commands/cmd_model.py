"""`semlayout predict` and `semlayout evaluate`: run a checkpoint on images or on a shard split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
# DESIGN.md's predictions.csv: id,direction,polarity,confidence, then predicted_iou
# (sem2layout) or predicted_ssim (layout2sem); the polarity margin and source, why a
# confidence is the lowest or unknown, and the layer come last
PREDICTION_COLUMNS = ("id", "direction", "polarity", "confidence")
TAIL_COLUMNS = ("polarity_margin", "polarity_source", "confidence_reason", "layer")


def predictions_csv(rows: list[dict[str, str]], direction: str) -> str:
    import csv
    import io

    predicted = "predicted_iou" if direction == "sem2layout" else "predicted_ssim"
    buf = io.StringIO()
    w = csv.DictWriter(
        buf,
        fieldnames=[*PREDICTION_COLUMNS, predicted, *TAIL_COLUMNS],
        lineterminator="\n",
    )
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def prediction_row(
    image_id: str, direction: str, decision: object, confidence: object, layer: str = "default"
) -> dict[str, str]:
    """One predictions.csv row: polarity +1 / -1, the confidence and predicted quality
    ("unknown" for a model without a calibration), the margin (empty unless auto / pooled),
    how the polarity was chosen (given, layer, pooled, auto, only) and the layer."""
    from semlayout.confidence import Confidence
    from semlayout.polarity_auto import PolarityDecision

    assert isinstance(decision, PolarityDecision) and isinstance(confidence, Confidence)

    def fmt(v: float | None) -> str:
        return "unknown" if v is None else f"{v:.4f}"

    predicted = "predicted_iou" if direction == "sem2layout" else "predicted_ssim"
    margin = "" if decision.margin is None else f"{decision.margin:.4f}"
    return {
        "id": image_id,
        "direction": direction,
        "polarity": f"{decision.polarity:+d}",
        "confidence": fmt(confidence.confidence),
        predicted: fmt(confidence.predicted),
        "polarity_margin": margin,
        "polarity_source": decision.source,
        "confidence_reason": confidence.reason or "",
        "layer": layer,
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
        help="the layer's polarity when known (bright or dark): auto translates in it",
    ),
    layer: str | None = typer.Option(
        None,
        "--layer",
        help="the layer (data set) the folder belongs to, 1-64 of A-Z a-z 0-9 . _ - "
        "(default: 'default'); a model adapted to this layer (a profile) translates with its "
        "conditioning; with --db its pooled evidence and configured polarity are "
        "read from the monitor store and the folder's evidence is added to them",
    ),
    per_image_polarity: bool = typer.Option(
        False,
        "--per-image-polarity",
        help="auto decides each image alone instead of reading the folder as one layer",
    ),
    db: str | None = typer.Option(
        None, "--db", help="monitor store (SQLite path or postgresql:// URL) holding the layers"
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
    OUT/predictions.csv (id,direction,polarity,confidence,predicted_iou|predicted_ssim,
    polarity_margin,polarity_source,confidence_reason,layer).

    With polarity auto the folder is one data set: every SEM's polarity evidence is read
    first, then every image is translated in the pooled polarity (source 'pooled').

    An image larger than one window (a whole SEM field, a layout clip) is cut into
    overlapping 250 px tiles, translated and blended without seams."""
    import cv2

    from semlayout.atomic import atomic_dir, check_not_over_inputs
    from semlayout.confidence import assess
    from semlayout.confidence_calibration import load_calibration
    from semlayout.data.pairs import read_gray8
    from semlayout.directions import Direction
    from semlayout.inference import Translator
    from semlayout.polarity import parse_choice
    from semlayout.polarity_layer import check_layer
    from semlayout.predict_folder import translate_folder
    from semlayout.tiling import check_field, is_field

    Direction.parse(direction)
    choice = parse_choice(polarity, "--polarity")
    configured = _layer_polarity(layer_polarity)
    name = check_layer(layer, "--layer")
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
    book, state = _layer_state(db, name, configured)
    tr = Translator.load(model, backend=backend, tracking_uri=tracking_uri, profile=layer)
    tr.fixed_polarity(direction, choice, state.prior())  # a polarity never learned: refused now
    calibration = load_calibration(Path(tr.info["path"]))
    done, after = translate_folder(
        tr,
        direction,
        images,
        choice,
        state,
        per_image_polarity,
        batch_size=batch_size,
        max_field_side=max_field_side,
    )
    greys = [t.output for t in done]
    confs = []
    for start in range(0, len(images), batch_size):  # the signals' extra forwards, in batches
        part = slice(start, start + batch_size)
        decisions = [t.decision for t in done[part]]
        confs += assess(tr, calibration, direction, images[part], greys[part], decisions)
    rows: list[dict[str, str]] = []
    with atomic_dir(out) as tmp:
        for path, t, conf in zip(files, done, confs, strict=True):
            ok, buf = cv2.imencode(".png", tr.to_layout(t.output) if binarize else t.output)
            if not ok:
                raise RuntimeError(f"PNG encoding failed for {path.name}")
            (tmp / path.name).write_bytes(buf.tobytes())
            rows.append(prediction_row(path.stem, direction, t.decision, conf, name))
        (tmp / PREDICTIONS_FILE).write_text(predictions_csv(rows, direction))
    if book is not None and after.n > state.n:
        book.fold(name, [t.decision.evidence for t in done if t.decision.evidence is not None])
    n_dark = sum(r["polarity"] == "-1" for r in rows)
    sources = sorted({r["polarity_source"] for r in rows})
    how = "confidence unknown (no calibration)" if calibration is None else "with confidence"
    print(
        f"translated {len(files)} image(s) {direction} with {tr.source} ({backend}) -> {out} "
        f"(polarity {polarity}: {len(rows) - n_dark} bright, {n_dark} dark; "
        f"{'/'.join(sources)}; layer {name}{_profile_note(tr)}; {how})"
    )


def _profile_note(tr: Any) -> str:
    """' (its profile)' when the model translated with the layer's learned conditioning."""
    return " (its profile)" if tr.info.get("profile") else ""


def _layer_polarity(value: str | None) -> int | None:
    """--layer-polarity as +1 / -1 (None when not given); auto is refused."""
    from semlayout.polarity import PolarityChoice, parse_choice

    if value is None:
        return None
    choice = parse_choice(value, "--layer-polarity")
    if choice is PolarityChoice.auto:
        raise SemlayoutError("--layer-polarity must be bright or dark (or leave it out)")
    return choice.value_or_none


def _layer_state(db: str | None, layer: str, configured: int | None) -> tuple[Any, Any]:
    """(the store's layer book or None, the layer's state; --layer-polarity overrides the
    store's configured polarity)."""
    from dataclasses import replace

    from semlayout.polarity_layer import LayerState

    book = None
    state = LayerState(layer)
    if db is not None:
        from semlayout.monitoring.layer_book import LayerBook
        from semlayout.monitoring.store import MonitorStore

        book = LayerBook(MonitorStore(db))
        state = book.get(layer)
    if configured is not None:
        state = replace(state, configured=configured)
    return book, state


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
    calibrate: bool = typer.Option(
        False,
        "--calibrate",
        help="fit the confidence calibration on the val split of --data and save it beside "
        "the weights (a local checkpoint folder); judged on SPLIT in the metrics and report",
    ),
) -> None:
    """Score both directions on a shard split (per family, with baselines) -> metrics.json \
[+ report]."""
    from semlayout.evaluation import evaluate_model, write_evaluation

    if history is not None and not history.is_file():
        raise SemlayoutError(f"--history {history} not found")
    judged = _calibrate(model, data, split, backend) if calibrate else None
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
    write_evaluation(result, out, report=report, curves=curves, confidence=judged)
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


def _calibrate(model: str, data: Path, split: str, backend: str) -> dict | None:
    """`evaluate --calibrate`: fit on data's val split, save beside the weights, judge on
    `split`; the judged numbers (with images, for the report)."""
    from semlayout.confidence_fit import fit_calibration, judge_split
    from semlayout.inference import Translator
    from semlayout.model_uri import ModelUri

    if ModelUri.is_model_uri(model):
        raise SemlayoutError(
            "--calibrate writes beside the weights: give a local checkpoint folder (a "
            "registered version gets its calibration from the pipeline's evaluate step)"
        )
    tr = Translator.load(model, backend=backend)
    cal = fit_calibration(tr, data)
    path = cal.save(Path(model))
    judged = judge_split(tr, cal, data, split)
    for d in ("sem2layout", "layout2sem"):
        j = judged.get(d) or {}
        print(
            f"confidence {d}: spearman {j.get('spearman', float('nan')):.3f}, calibration error "
            f"{j.get('calibration_error', float('nan')):.3f} on {split}"
        )
    print(f"wrote {path}")
    return judged


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
    app.command("evaluate")(evaluate)
