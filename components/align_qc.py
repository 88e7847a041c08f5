"""Step 2: NCC alignment of each SEM to its template, QC verdicts, aligned 250x250 pair folder."""

from kfp.dsl import Dataset, Input, Metrics, Output


def align_qc(
    pairs: Input[Dataset], min_pass_fraction: float, aligned: Output[Dataset], qc: Output[Metrics]
):
    """Align every pair; fail the step when fewer than `min_pass_fraction` pass QC."""
    from collections import Counter
    from pathlib import Path

    from semlayout.data.align import AlignConfig
    from semlayout.data.align_folder import align_folder
    from semlayout.data.alignment_table import read_alignment_table
    from semlayout.errors import SemlayoutError
    from semlayout_components.common import Stopwatch

    with Stopwatch() as sw:
        align_folder(Path(pairs.path), Path(aligned.path), AlignConfig(), workers=2)
    rows = read_alignment_table(Path(aligned.path))
    passed = sum(r.qc_pass for r in rows)
    reasons = Counter(r.reason for r in rows)
    fraction = passed / len(rows) if rows else 0.0
    qc.log_metric("qc_pass_fraction", round(fraction, 4))
    qc.log_metric("n_pairs", len(rows))
    qc.log_metric("n_passed", passed)
    aligned.metadata.update(
        {"n_pairs": len(rows), "n_passed": passed, "reasons": dict(reasons), "seconds": sw.seconds}
    )
    if passed == 0 or fraction < min_pass_fraction:
        raise SemlayoutError(
            f"only {passed}/{len(rows)} pairs passed alignment QC ({fraction:.1%}; at least "
            f"{min_pass_fraction:.0%} expected); reasons: {dict(reasons)}"
        )
