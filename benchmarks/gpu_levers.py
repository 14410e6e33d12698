"""Each lever of a full GPU, measured alone against the suite as it runs, then those that paid together.

Run on a machine with a CUDA GPU (``--device cpu --profile cpu --quick`` rehearses the script):

    python benchmarks/gpu_levers.py --out benchmarks/results/gpu_levers_<date>.md

Why one lever at a time: issue 31 asks to keep only what pays, per device, and a lever that helps
alone may not help beside another (a CUDA graph removes the launch overhead that fused optimizers
also remove). The training step is ``TorchMethod.fit``'s, on one fixed-shape episode on the
device (as ``fit`` gathers episodes from a training split already on the device): autocast as
``precision`` says, the method's ``training_loss``, backward, the non-finite-gradient check (a host
synchronisation) and the optimizer step. Rates are volumes per second; "limit" is the share of the
device's dense bf16 peak (``--peak-tflops``, 790 for an H200 by default) at the network's FLOPs per
volume (forward ×3 for training).

Training levers: fp32 instead of bf16 autocast; TF32 matrix units in fp32; a fused Adam; the
``compile`` hyper-parameter ("default" and "reduce-overhead", a CUDA graph); no host check of the
gradients; a 20-way episode (40 volumes per step instead of 10). Inference levers (the decoder
network's full stream): 256 volumes per call instead of 8 (what ``--score-batch`` does); fp32;
contiguous instead of channels-last memory; BatchNorm unfolded; ``torch.compile``.
GPU utilisation (nvidia-smi) is sampled while the fastest training runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))

from gpu_check import Utilisation  # noqa: E402

from fewshot_cryoet.episodes import Episode  # noqa: E402
from fewshot_cryoet.methods.cosnet import COSNet  # noqa: E402


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(step: Callable[[], None], volumes: int, seconds: float, device: torch.device, warm: int = 3) -> float:
    """Volumes per second of ``step`` run for about ``seconds`` after ``warm`` untimed calls
    (compilation and CUDA-graph capture happen there)."""
    for _ in range(warm):
        step()
    synchronise(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or calls < 2:
        step()
        calls += 1
        if calls % 10 == 0:
            synchronise(device)
    synchronise(device)
    return volumes * calls / (time.perf_counter() - start)


def episode_of(way: int, box: int, device: torch.device) -> Episode:
    """A ``way``-way 1-shot, 1-query episode of random volumes and masks on the device."""
    generator = torch.Generator().manual_seed(0)
    support = torch.randn(way, 1, box, box, box, generator=generator).to(device)
    query = torch.randn(way, 1, box, box, box, generator=generator).to(device)
    labels = torch.arange(way, device=device)
    return Episode(support, labels, query, labels, tuple(str(i) for i in range(way)), 10.0, 1.0,
                   (support > 0.5).to(torch.uint8), (query > 0.5).to(torch.uint8))


def training_rate(profile: str, device: torch.device, seconds: float, *, precision: str = "auto",
                  compile: str = "off", fused: bool = False, tf32: bool = False, check: bool = True,
                  way: int = 5) -> float:
    method = COSNet({"profile": profile, "precision": precision, "compile": compile}, "duse-decoder", device)
    method.network.train()
    episode = episode_of(way, int(method.params["box"]), device)
    options = {"fused": True} if fused else {}
    optimizer = torch.optim.Adam(method.network.parameters(), lr=1e-4, **options)
    loss_of = method._training_step_loss()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32

    def step() -> None:
        with method.autocast(training=True):
            loss = loss_of(episode)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not check or method._gradients_finite():
            optimizer.step()

    try:
        return rate(step, 2 * way, seconds, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def inference_rate(profile: str, device: torch.device, seconds: float, *, batch: int = 8, precision: str = "auto",
                   channels_last: bool = True, folded: bool = True, compiled: bool = False) -> float:
    method = COSNet({"profile": profile, "precision": precision}, "duse-decoder", device)
    method.network.eval()
    network = method.inference_network if folded else method.network
    if not channels_last:
        network = network.to(memory_format=torch.contiguous_format)
    stream = torch.compile(network.stream, dynamic=False) if compiled else network.stream
    box = int(method.params["box"])
    volumes = torch.randn(batch, 1, box, box, box, device=device)
    if channels_last:
        volumes = volumes.contiguous(memory_format=torch.channels_last_3d)

    def step() -> None:
        with torch.inference_mode(), method.autocast(training=False):
            stream(volumes)

    return rate(step, batch, seconds, device)


def flops_per_volume(profile: str, device: torch.device) -> float:
    """Forward FLOPs of one volume through the decoder network (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    method = COSNet({"profile": profile}, "duse-decoder", device)
    box = int(method.params["box"])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        method.network.stream(torch.randn(1, 1, box, box, box, device=device))
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--profile", default="paper", help="COS-Net profile [paper].")
    parser.add_argument("--seconds", type=float, default=4.0, help="Timed seconds per measurement [4].")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="The device's dense bf16 peak [790, H200].")
    parser.add_argument("--quick", action="store_true", help="Skip the compiled levers (a CPU rehearsal).")
    parser.add_argument("--out", type=Path, default=None, help="Markdown page to write [print only].")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible; --device cpu --profile cpu --quick rehearses this")
    gpu = device.type == "cuda"
    flops = flops_per_volume(args.profile, device)
    peak = args.peak_tflops * 1e12

    def limit(volumes_per_second: float, factor: float) -> str:
        return f"{100 * volumes_per_second * flops * factor / peak:.1f}%" if gpu else "—"

    training = [("as the suite trains (bf16 autocast on CUDA, channels-last, Adam)", {}),
                ("fp32", {"precision": "fp32"}),
                ("fp32 + TF32", {"precision": "fp32", "tf32": True}),
                ("fused Adam", {"fused": True}),
                ("no host check of the gradients", {"check": False}),
                ("20-way episode (40 volumes per step)", {"way": 20})]
    if not args.quick:
        training += [("compile=default", {"compile": "default"}), ("compile=reduce-overhead", {"compile": "reduce-overhead"})]
    inference = [("as the suite scores (8 volumes per call, folded BatchNorm, channels-last)", {}),
                 ("256 volumes per call (--score-batch)", {"batch": 256}),
                 ("fp32", {"precision": "fp32"}),
                 ("contiguous memory", {"channels_last": False}),
                 ("BatchNorm unfolded", {"folded": False})]
    if not args.quick:
        inference += [("torch.compile", {"compiled": True}), ("torch.compile, 256 per call", {"compiled": True, "batch": 256})]

    rows: list[tuple] = []

    def measure(kind: str, levers_list: list, measured: Callable[..., float], factor: float) -> float:
        """Rows of one kind, each lever against the first row; returns the first row's rate. The
        first row is measured again last ("again"): a machine that warms up or is shared drifts,
        and the two first-row rates show by how much."""
        base = None
        for what, levers in [*levers_list, (f"{levers_list[0][0]}, again", levers_list[0][1])]:
            value = measured(args.profile, device, args.seconds, **levers)
            base = base or value
            rows.append((kind, what, value, value / base, limit(value, factor)))
            print(f"{kind} | {what}: {value:.1f} volumes/s ({value / base:.2f}×)", flush=True)
        return base

    base = measure("training", training, training_rate, 3.0)
    paid = {k: v for what, levers in training[1:] for k, v in levers.items()
            if next(r for r in rows if r[1] == what)[3] > 1.05 and k not in ("way", "precision")}
    if paid:
        value = training_rate(args.profile, device, args.seconds, **paid)
        rows.append(("training", f"together: {', '.join(f'{k}={v}' for k, v in paid.items())}", value, value / base,
                     limit(value, 3.0)))
    best = max((r for r in rows if r[0] == "training" and "20-way" not in r[1]), key=lambda r: r[2])
    best_levers = paid if best[1].startswith("together") else dict(next(
        (levers for what, levers in training if what == best[1]), {}))
    with Utilisation(device) as utilisation:
        training_rate(args.profile, device, max(args.seconds, 8.0), **best_levers)
    measure("inference", inference, inference_rate, 1.0)

    name = torch.cuda.get_device_name(device) if gpu else "CPU rehearsal"
    lines = [f"# GPU levers, one at a time: COS-Net {args.profile} profile, DuSE with decoder", "",
             f"- device: {device} ({name}), {os.cpu_count()} CPU cores, torch {torch.__version__}, "
             f"date {time.strftime('%Y-%m-%d')}",
             f"- {flops / 1e9:.1f} GFLOP per volume forward; limit = share of {args.peak_tflops:g} TFLOP/s "
             "(training counted as 3× forward)" if gpu else f"- {flops / 1e9:.2f} GFLOP per volume forward",
             f"- GPU utilisation while the fastest training ({best[1]}) ran: {utilisation.text()}",
             f"- {args.seconds:g} s timed per row, after 3 untimed calls", "",
             "| what | lever | volumes/s | vs the first row | share of the limit |", "|---|---|---|---|---|"]
    lines += [f"| {kind} | {what} | {value:.1f} | {ratio:.2f}× | {share} |" for kind, what, value, ratio, share in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
