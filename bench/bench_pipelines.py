"""Per-task overhead of the kfp.local SubprocessRunner (what `make run` pays per step).

A pipeline of N no-op lightweight components (one parameter, one Dataset artifact each)
runs under kfp.local; per-task wall time comes from the orchestrator's own log records
(`pipelines.local`). Baselines measured in the same run: a bare `python -c pass` and
`python -c "import kfp.dsl.executor_main"` subprocess (what a task starts with) (the floor a
task cannot go under).
"""

import statistics
import subprocess
import sys
import tempfile
import time

from kfp import dsl
from kfp.dsl import Dataset, Input, Output


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _noop_param(x: int) -> int:
    return x + 1


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _noop_artifact(x: int, src: Input[Dataset], out: Output[Dataset]) -> int:
    with open(src.path) as f:
        text = f.read()
    with open(out.path, "w") as f:
        f.write(text + str(x))
    return x + 1


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _seed(out: Output[Dataset]):
    with open(out.path, "w") as f:
        f.write("0")


def _chain(n: int):  # noqa: ANN202
    @dsl.pipeline(name="overhead")
    def p() -> int:
        t = _noop_param(x=0)
        for _ in range(n - 1):
            t = _noop_param(x=t.output)
        s = _seed()
        a = _noop_artifact(x=t.output, src=s.outputs["out"])
        for _ in range(n - 1):
            a = _noop_artifact(x=a.outputs["Output"], src=a.outputs["out"])
        return a.outputs["Output"]

    return p


def _subprocess_median(code: str, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(quick: bool = False) -> dict:
    from semlayout_pipelines.local import run_pipeline

    n = 3 if quick else 8
    reps = 3 if quick else 7
    with tempfile.TemporaryDirectory() as root:
        run = run_pipeline(_chain(n), root)
    assert run.error is None, run.error
    param = [t.seconds for k, t in run.tasks.items() if k.startswith("noop-param")]
    art = [t.seconds for k, t in run.tasks.items() if k.startswith("noop-artifact")]
    bare = _subprocess_median("pass", reps)
    kfp_import = _subprocess_median("import kfp.dsl.executor_main", reps)
    res = {
        "tasks": len(run.tasks),
        "task_param_median_s": round(statistics.median(param), 3),
        "task_artifact_median_s": round(statistics.median(art), 3),
        "python_bare_s": round(bare, 3),
        "python_import_kfp_s": round(kfp_import, 3),
        "pipeline_total_s": run.seconds,
    }
    res["overhead_vs_kfp_import"] = round(res["task_param_median_s"] / kfp_import, 2)
    print(
        f"{'kfp.local SubprocessRunner, per task (median)':<48} {'seconds':>8} {'x import kfp':>13}"
    )
    for label, key in (
        ("no-op task, parameter in/out", "task_param_median_s"),
        ("no-op task, Dataset artifact in/out", "task_artifact_median_s"),
        ("baseline: python -c import kfp.dsl.executor_main", "python_import_kfp_s"),
        ("baseline: python -c pass", "python_bare_s"),
    ):
        print(f"{label:<48} {res[key]:>8.3f} {res[key] / kfp_import:>13.2f}")
    return res


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
