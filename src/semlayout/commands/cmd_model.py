"""`semlayout predict` and `semlayout evaluate`: run a checkpoint on images or on a shard split."""

from __future__ import annotations

from pathlib import Path

import typer

from semlayout.errors import SemlayoutError


def _list_pngs(in_dir: Path) -> list[Path]:
    if not in_dir.is_dir():
        raise SemlayoutError(f"input folder not found: {in_dir}")
    files = sorted(p for p in in_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise SemlayoutError(f"{in_dir} holds no .png images to translate")
    return files


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
) -> None:
    """Translate every PNG in IN_DIR to a PNG of the same name and size in OUT."""
    import cv2

    from semlayout.atomic import atomic_dir, check_not_over_inputs
    from semlayout.data.pairs import read_gray8
    from semlayout.directions import Direction
    from semlayout.inference import Translator

    Direction.parse(direction)
    if binarize and direction != "sem2layout":
        raise SemlayoutError("--binarize applies to --direction sem2layout only")
    files = _list_pngs(in_dir)
    check_not_over_inputs(out, input_folder=in_dir, model=model)
    images = [read_gray8(p) for p in files]  # refuses 16-bit / RGB naming the file, before any work
    tr = Translator.load(model, backend=backend, tracking_uri=tracking_uri)
    with atomic_dir(out) as tmp:
        for start in range(0, len(files), batch_size):
            preds = tr.translate(
                direction,
                images[start : start + batch_size],
                binarize=binarize,
                batch_size=batch_size,
            )
            for path, pred in zip(files[start : start + batch_size], preds, strict=True):
                ok, buf = cv2.imencode(".png", pred)
                if not ok:
                    raise RuntimeError(f"PNG encoding failed for {path.name}")
                (tmp / path.name).write_bytes(buf.tobytes())
    print(f"translated {len(files)} image(s) {direction} with {tr.source} ({backend}) -> {out}")


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
