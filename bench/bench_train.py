"""Training and generator-inference speed on the CPU, against baselines measured in the same run.

Networks: `small` (configs/small.yaml), `full` (configs/improved.yaml's generator: 256 px,
ngf 64, 5 downs, attention) and `pix2pix` (the classic unet_256: 8 downs, ngf 64,
max 512 filters, BatchNorm; the reference layout). For each: generator forward ms at
batch 1 and 8, achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode) as a share of
an fp32 2048x2048 matmul timed in the same run (a bf16 matmul is timed too), and a full
training step (`Trainer.train_step`: D update + G update, both directions) in images/s, at
the config's batch size and at `train.crop_size` when the config trains on crops (the step
`make run` runs).

Every variant keeps the architecture and the weights; ratios are against plain fp32 eager
(contiguous memory, no autocast: the config's own `channels_last` / `precision` never leak
into the baseline) in the same run. The variants of one table take turns round-robin, each
timed call right after an untimed call of the same variant (`bench.timing.interleaved`), and
are reported as medians with their interquartile range (IQR, relative to the median).
Inference: channels_last; oneDNN fusion through `torch.jit.trace` + `torch.jit.freeze`;
oneDNN Graph (`torch.jit.enable_onednn_fusion`) on the frozen trace; bf16 as autocast around
the fp32 network (`bf16_autocast`) or as a bf16 copy of the weights (`bf16`, `cl+bf16`,
`jit_freeze+bf16`, `onednn_graph+bf16`), each with its largest absolute output difference
from fp32 eager (outputs are in [-1, 1]); full mode adds `torch.compile` and ONNX Runtime
(dynamo exporter, opset 18). Training: `train.channels_last`, `train.precision: bf16` (G and
D forwards under bf16 autocast, losses and optimiser state fp32) and both; full mode adds
`torch.compile` (mode default, static shapes: with automatic dynamic shapes inductor 2.13
failed on the full D once the small D's shapes had been seen, ValueRangeError) of G_A, G_B,
D_A, D_B inside the step, fp32 and bf16, with
its warm-up time and the number of graphs dynamo compiled (the D runs with gradients, under
no_grad and with its weights frozen: each is a graph). `loss diff`: the largest relative
difference of the first step's loss terms from eager's (same weights, batch and RNG seed;
channels_last and compile draw the dropout masks differently, so they differ by ~1% for that
reason alone). Goals: inference >= 1.5x, training step >= 1.2x. `--threads 1` (see
`python -m bench --help`) when another job shares the cores: two intra-op threads then wait
on each other and eager times swing by 10x or more.
A variant that fails is reported as failed and the others still run. On a CPU without bf16
units (no AMX, no AVX512-BF16) the bf16 variants are skipped, as `train.precision: auto`
skips them: emulated bf16 measured 7-14x *slower* than fp32 (an AVX2-only AMD EPYC, Dec.),
and its 2048^2 matmul alone took minutes; `SEMLAYOUT_BENCH_BF16=1` times them anyway.
The step ratio is the step alone, in one process: for the small config the whole `make run`
training stage (16 epochs, data loading and per-epoch validation included) measured 1.03x
and 1.08x faster with bf16 in two order-swapped pairs of runs on this 2-core VM (279 -> 259 s,
253 -> 245 s), with the same test IoU (0.901 fp32, 0.902 bf16); the full config's step,
dominated by wide convolutions, gains far more.
Quick mode (~30 s on an idle machine): small network only, no compile, no ONNX.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch._dynamo

from bench.timing import describe_cpu, interleaved

ROOT = Path(__file__).resolve().parents[1]
GOAL_INFERENCE, GOAL_TRAIN = 1.5, 1.2


def _median_ms(fn: Callable[[], Any], reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def native_bf16() -> bool:
    """Does this CPU have bf16 units? (the same probe as `train.precision: auto`)"""
    import os

    from semlayout.train.trainer import resolve_precision

    return (
        os.environ.get("SEMLAYOUT_BENCH_BF16") == "1"
        or resolve_precision("auto", torch.device("cpu")) == "bf16"
    )


def matmul_gflops(reps: int, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    ms = _median_ms(lambda: a @ b, reps)
    return 2 * 2048**3 / (ms / 1000) / 1e9


def _configs(quick: bool) -> dict[str, Any]:
    from semlayout.config import GeneratorConfig, load_config

    small = load_config(ROOT / "configs" / "small.yaml")
    out = {"small": small}
    if not quick:
        full = load_config(ROOT / "configs" / "improved.yaml")
        # the classic pix2pix unet_256 has a 1x1 bottleneck, which our config refuses for
        # training with BatchNorm; model_construct skips that check for this timing reference
        p2p = full.model_copy(deep=True)
        p2p.generator = GeneratorConfig.model_construct(
            **{
                **GeneratorConfig().model_dump(),
                "image_size": 256,
                "base_filters": 64,
                "max_filters": 512,
                "n_down": 8,
                "norm": "batch",
                "attention": False,
            }
        )
        p2p.discriminator.spectral_norm = False
        p2p.discriminator.norm = "batch"
        out |= {"full": full, "pix2pix": p2p}
    return out


def _flops(net: torch.nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return float(counter.get_total_flops())


@contextlib.contextmanager
def _onednn_fusion() -> Iterator[None]:
    """oneDNN Graph fusion for TorchScript calls inside the block (a process-wide switch)."""
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(False)


def _inference_variants(
    net: torch.nn.Module, cfg: Any, x: torch.Tensor, quick: bool, bf16: bool
) -> dict[str, Callable[[], torch.Tensor]]:
    from semlayout.models.unet import UNetGenerator

    def copy(
        fmt: torch.memory_format = torch.contiguous_format, dtype: torch.dtype = torch.float32
    ) -> torch.nn.Module:
        other = UNetGenerator(cfg.generator).eval()
        other.load_state_dict(net.state_dict())
        return other.to(memory_format=fmt, dtype=dtype)  # type: ignore[call-overload]

    cl = torch.channels_last
    x_cl = x.contiguous(memory_format=cl)
    net_cl = copy(cl)
    v: dict[str, Callable[[], torch.Tensor]] = {"eager": lambda: net(x)}
    v["channels_last"] = lambda: net_cl(x_cl)
    frozen = torch.jit.freeze(torch.jit.trace(copy(), x))
    v["jit_freeze"] = lambda: frozen(x)
    with _onednn_fusion():
        graph = torch.jit.freeze(torch.jit.trace(copy(), x))

    def onednn_graph() -> torch.Tensor:
        with _onednn_fusion():
            return graph(x)

    v["onednn_graph"] = onednn_graph

    if bf16:
        v |= _bf16_inference_variants(net, copy, x, quick)
    if not quick:
        compiled = torch.compile(copy(), dynamic=False)
        v["compile"] = lambda: compiled(x)
        v["onnxruntime"] = _ort_runner(net, cfg.generator.image_size, x)
    return v


def _bf16_inference_variants(
    net: torch.nn.Module, copy: Callable[..., torch.nn.Module], x: torch.Tensor, quick: bool
) -> dict[str, Callable[[], torch.Tensor]]:
    cl, bf = torch.channels_last, torch.bfloat16
    x_bf = x.to(bf)
    x_cl_bf = x_bf.contiguous(memory_format=cl)
    net_bf, net_cl_bf = copy(dtype=bf), copy(cl, bf)
    v: dict[str, Callable[[], torch.Tensor]] = {}

    def bf16_autocast() -> torch.Tensor:
        with torch.autocast("cpu", dtype=bf):
            return net(x)

    v["bf16_autocast"] = bf16_autocast
    v["bf16"] = lambda: net_bf(x_bf)
    v["cl+bf16"] = lambda: net_cl_bf(x_cl_bf)
    frozen_bf = torch.jit.freeze(torch.jit.trace(copy(dtype=bf), x_bf))
    v["jit_freeze+bf16"] = lambda: frozen_bf(x_bf)
    with _onednn_fusion():
        graph_bf = torch.jit.freeze(torch.jit.trace(copy(dtype=bf), x_bf))

    def onednn_graph_bf16() -> torch.Tensor:
        with _onednn_fusion():
            return graph_bf(x_bf)

    v["onednn_graph+bf16"] = onednn_graph_bf16
    if not quick:
        compiled_bf = torch.compile(copy(cl, bf), dynamic=False)
        v["compile+cl+bf16"] = lambda: compiled_bf(x_cl_bf)
    return v


def _inference(cfg: Any, quick: bool, reps: int, bf16: bool) -> dict[str, Any]:
    from semlayout.models.unet import UNetGenerator

    torch._dynamo.reset()  # each network's compiled graphs start from scratch (static shapes)
    size = cfg.generator.image_size
    torch.manual_seed(0)
    net = UNetGenerator(cfg.generator).eval()
    res: dict[str, Any] = {}
    for batch in (1, 8):
        x = torch.randn(batch, 1, size, size)
        gflop = _flops(net, x) / 1e9
        row: dict[str, Any] = {"gflop": round(gflop, 3)}
        with torch.no_grad():
            variants = _inference_variants(net, cfg, x, quick, bf16)
            ref = net(x)
            diffs = {}
            for vname, fn in list(variants.items()):  # warm-up: oneDNN Graph and compile fuse early
                try:
                    for _ in range(3 if vname.startswith(("compile", "onednn")) else 1):
                        out = fn()
                except Exception as err:  # a backend that fails is reported, the others still run
                    row[vname] = {"error": _first_line(err)}
                    del variants[vname]
                    continue
                diffs[vname] = float((torch.as_tensor(out).float() - ref).abs().max())
            times = interleaved(variants, reps)
        base = times["eager"].median
        for vname, st in times.items():
            ms = st.median
            row[vname] = {
                "ms": round(ms, 2),
                "spread": round(st.spread, 3),
                "gflops": round(gflop / (ms / 1000), 1),
                "speedup": round(base / ms, 2),
                "max_abs_diff": float(f"{diffs[vname]:.2g}"),
            }
        res[f"b{batch}"] = row
    return res


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:160]


def _ort_runner(net: torch.nn.Module, size: int, x: torch.Tensor) -> Callable[[], Any]:
    import onnxruntime as ort

    from semlayout.train.export import export_generator

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-onnx-"))
    path = export_generator(net, tmp / "g.onnx", size)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: torch.from_numpy(sess.run(None, feed)[0])


def _train_variants(quick: bool, name: str, bf16: bool) -> dict[str, tuple[dict[str, Any], bool]]:
    """variant -> (train config overrides, torch.compile the four networks)."""
    # every variant spells out both settings: the config's own values (small.yaml trains with
    # channels_last and precision auto) must not leak into the plain eager baseline
    fp32, cl = {"precision": "fp32", "channels_last": False}, {"channels_last": True}
    out: dict[str, tuple[dict[str, Any], bool]] = {
        "eager": (fp32, False),
        "channels_last": ({**fp32, **cl}, False),
    }
    if bf16:
        out["bf16"] = ({**fp32, "precision": "bf16"}, False)
        out["cl+bf16"] = ({**cl, "precision": "bf16"}, False)
    if not quick and name != "pix2pix":  # the reference network: eager-family variants only
        out["compile"] = (fp32, True)
        if bf16:
            out["compile+bf16"] = ({**fp32, "precision": "bf16"}, True)
    return out


def _step_fn(trainer: Any, sem: torch.Tensor, lay: torch.Tensor) -> Callable[[], dict[str, float]]:
    return lambda: trainer.train_step(sem, lay)


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _training(name: str, cfg: Any, quick: bool, reps: int, bf16: bool) -> dict[str, Any]:
    from semlayout.config import TrainConfig
    from semlayout.train.trainer import Trainer

    batch = cfg.train.batch_size
    size = cfg.train.crop_size or cfg.generator.image_size
    res: dict[str, Any] = {"batch": batch, "size": size}
    torch._dynamo.reset()
    steps: dict[str, Callable[[], Any]] = {}
    info: dict[str, dict[str, Any]] = {}
    first_losses: dict[str, dict[str, float]] = {}
    for vname, (over, compiled) in _train_variants(quick, name, bf16).items():
        # only the train section is revalidated: pix2pix's generator config is model_construct'ed
        c = cfg.model_copy(
            update={"train": TrainConfig.model_validate({**cfg.train.model_dump(), **over})}
        )
        torch.manual_seed(0)
        trainer = Trainer(c)
        if compiled:  # the step calls these attributes; trainer.nets keeps the plain modules
            for attr in ("G_A", "G_B", "D_A", "D_B"):
                setattr(trainer, attr, torch.compile(getattr(trainer, attr), dynamic=False))
        fmt = torch.channels_last if c.train.channels_last else torch.contiguous_format
        gen = torch.Generator().manual_seed(1)
        sem = (
            torch.rand(batch, 1, size, size, generator=gen)
            .mul(2)
            .sub(1)
            .contiguous(memory_format=fmt)
        )
        lay = (torch.rand(batch, 1, size, size, generator=gen) > 0.5).float().mul(2).sub(1)
        lay = lay.contiguous(memory_format=fmt)
        step = _step_fn(trainer, sem, lay)
        graphs, t0 = _graphs_compiled(), time.perf_counter()
        torch.manual_seed(2)
        try:
            first_losses[vname] = step()
            for _ in range(2 if compiled else 0):  # compile: the later calls must not recompile
                step()
        except Exception as err:  # a variant that fails is reported, the others still run
            res[vname] = {"error": _first_line(err)}
            continue
        steps[vname] = step
        info[vname] = {}
        if compiled:
            info[vname] = {
                "warmup_s": round(time.perf_counter() - t0, 1),
                "graphs": _graphs_compiled() - graphs,
            }
            before = _graphs_compiled()
            step()
            info[vname]["recompiled_after_warmup"] = _graphs_compiled() - before
    times = interleaved(steps, reps)
    base = times["eager"].median
    ref = first_losses["eager"]
    for vname, st in times.items():
        ms = st.median
        loss_diff = max(abs(first_losses[vname][k] - ref[k]) / max(abs(ref[k]), 1e-6) for k in ref)
        res[vname] = {
            "step_ms": round(ms, 1),
            "spread": round(st.spread, 3),
            "images_per_s": round(batch / (ms / 1000), 2),
            "speedup": round(base / ms, 2),
            "first_step_loss_rel_diff": float(f"{loss_diff:.2g}"),
            **info[vname],
        }
    return res


def _print_inference(name: str, inf: dict[str, Any], peak: float) -> None:
    print(
        f"{'network':<8} {'batch':>5} {'variant':<18} {'ms':>9} {'IQR':>5} {'GFLOP/s':>8} "
        f"{'of fp32':>7} {'x eager':>7} {'max|diff|':>9}"
    )
    for b in ("b1", "b8"):
        for vname, v in inf[b].items():
            if vname == "gflop":
                continue
            if "error" in v:
                print(f"{name:<8} {b[1:]:>5} {vname:<18} failed: {v['error']}")
                continue
            print(
                f"{name:<8} {b[1:]:>5} {vname:<18} {v['ms']:>9.2f} {v['spread']:>5.0%} "
                f"{v['gflops']:>8.1f} {v['gflops'] / peak:>7.0%} {v['speedup']:>7.2f} "
                f"{v['max_abs_diff']:>9.2g}",
                flush=True,
            )


def _print_training(name: str, t: dict[str, Any]) -> None:
    print(
        f"{'network':<8} {'train step':<18} {'size':>5} {'ms':>9} {'IQR':>5} {'img/s':>8} "
        f"{'x eager':>7} {'loss diff':>9}  compile"
    )
    for vname, v in t.items():
        if not isinstance(v, dict):
            continue
        if "error" in v:
            print(f"{name:<8} {vname:<18} failed: {v['error']}")
            continue
        extra = (
            (
                f"  warm-up {v['warmup_s']} s, {v['graphs']} graphs, "
                f"{v['recompiled_after_warmup']} recompiled later"
            )
            if "graphs" in v
            else ""
        )
        print(
            f"{name:<8} {vname:<18} {t['size']:>5} {v['step_ms']:>9.1f} {v['spread']:>5.0%} "
            f"{v['images_per_s']:>8.2f} {v['speedup']:>7.2f} "
            f"{v['first_step_loss_rel_diff']:>9.2g}{extra}",
            flush=True,
        )


def _print_goals(results: dict[str, Any]) -> None:
    for name, r in results["networks"].items():
        for key, goal in (("b1", GOAL_INFERENCE), ("b8", GOAL_INFERENCE), ("train", GOAL_TRAIN)):
            table = r["inference"][key] if key != "train" else r["train"]
            timed = [
                v
                for v in table
                if isinstance(table[v], dict) and "speedup" in table[v] and v != "eager"
            ]
            best = max(timed, key=lambda v: table[v]["speedup"])
            sp = table[best]["speedup"]
            what = f"inference {key}" if key != "train" else "training step"
            print(
                f"goal {name} {what} >= {goal}x eager: best {best} {sp}x -> "
                f"{'met' if sp >= goal else 'NOT met'}"
            )


def main(quick: bool = False) -> dict[str, Any]:
    # the compiled variants share the networks' forward code; with dynamo's default limit (8
    # graphs per code object) the later ones would silently fall back to eager
    torch._dynamo.config.recompile_limit = 64
    reps = 5 if quick else 7
    peak = matmul_gflops(reps)
    bf16 = native_bf16()
    results: dict[str, Any] = {
        "cpu": describe_cpu(),
        "threads": torch.get_num_threads(),
        "matmul_2048_gflops": round(peak, 1),
        "bf16_units": bf16,
        "networks": {},
    }
    if bf16:
        results["matmul_2048_bf16_gflops"] = round(matmul_gflops(reps, torch.bfloat16), 1)
        bf16_text = f"bf16: {results['matmul_2048_bf16_gflops']:.1f} GFLOP/s"
    else:
        bf16_text = (
            "no bf16 units: bf16 variants skipped (SEMLAYOUT_BENCH_BF16=1 times them anyway)"
        )
    print(
        f"{results['cpu']}, threads {results['threads']}, "
        f"fp32 2048^2 matmul: {peak:.1f} GFLOP/s (the ceiling), {bf16_text}",
        flush=True,
    )
    for name, cfg in _configs(quick).items():
        inf = _inference(cfg, quick, reps, bf16)
        _print_inference(name, inf, peak)
        train = _training(name, cfg, quick, 5 if quick else 3, bf16)
        _print_training(name, train)
        results["networks"][name] = {
            "image_size": cfg.generator.image_size,
            "inference": inf,
            "train": train,
        }

    _print_goals(results)
    nets = results["networks"]
    if "pix2pix" in nets:
        ref = nets["pix2pix"]["inference"]["b1"]["eager"]["ms"]
        for name in ("small", "full"):
            nets[name]["inference_vs_pix2pix_b1"] = round(
                ref / nets[name]["inference"]["b1"]["eager"]["ms"], 2
            )
            print(
                f"{name}: generator b1 eager {nets[name]['inference_vs_pix2pix_b1']}x "
                "faster than pix2pix unet_256"
            )
        p2p = nets["pix2pix"]["train"]
        tref = p2p["batch"] / p2p["eager"]["step_ms"]  # images per ms: the sizes differ (crops)
        for name in ("small", "full"):
            t = nets[name]["train"]
            nets[name]["train_vs_pix2pix"] = round(t["batch"] / t["eager"]["step_ms"] / tref, 2)
            print(
                f"{name}: training images/s {nets[name]['train_vs_pix2pix']}x pix2pix's "
                f"({t['size']} px vs {p2p['size']} px)"
            )
    return results


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
