"""The GPU path, proven in one short run: training, agreement with the CPU, speed and one bench cell.

Run on a machine with a CUDA GPU:  python benchmarks/gpu_check.py
(``--device cpu`` runs the same steps on the CPU, as a smoke test of the script itself.)

1. Trains each neural method (protonet, siamese, COS-Net with and without decoder) for a few dozen
   episodes on the device, as ``fsc bench`` does (bf16 autocast on CUDA; the training split is
   copied to the GPU once, so episodes are gathered there with no host round-trip), and samples
   GPU utilisation meanwhile (``nvidia-smi``).
2. Agreement: the trained weights, copied to a CPU instance, must give the same predictions in
   fp32 on both devices (class scores, argmax, segmentation probabilities), and a bf16 training
   loss on the device must match the fp32 loss on the CPU within bf16 tolerance.
3. Speed: ``benchmarks/cosnet_speed.py`` on the device (the COS-Net paper profile against the
   plain fp32 implementation of the published network).
4. One small bench cell end to end on the device (``api.bench``), with its accuracy.

Writes ``benchmarks/results/gpu_check.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from fewshot_cryoet import api  # noqa: E402
from fewshot_cryoet.core.types import Budget  # noqa: E402
from fewshot_cryoet.datasets.simulate import SimulationConfig  # noqa: E402
from fewshot_cryoet.episodes import EpisodeSpec, load_episode, sample_episodes  # noqa: E402
from fewshot_cryoet.evaluation.runner import fit_context  # noqa: E402
from fewshot_cryoet.plugins import get_plugins  # noqa: E402

METHODS = (("protonet", None), ("siamese", None), ("cosnet", "duse-decoder"), ("cosnet", "scnn"))


class Utilisation:
    """GPU utilisation sampled every 0.2 s from nvidia-smi while the block runs (None on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples, self._stop = device, [], threading.Event()

    def __enter__(self) -> Utilisation:
        if self.device.type == "cuda":
            threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def _sample(self) -> None:
        index = self.device.index or 0
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", str(index)], capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            time.sleep(0.2)

    def text(self) -> str:
        return f"{np.mean(self.samples):.0f}% mean, {np.max(self.samples):.0f}% max" if self.samples else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--episodes", type=int, default=40, help="Training episodes per method.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_check.md")
    parser.add_argument("--no-speed", action="store_true", help="Skip step 3 (for a quick CPU smoke test).")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible; run with --device cpu for a smoke test")
    work = Path(tempfile.mkdtemp(prefix="fsc-gpu-check-"))
    data = api.simulate(work / "data", classes=10, per_class=24, snrs=[1.0], seed=0,
                        config=SimulationConfig(route="fourier"))
    lines = ["# GPU check", "",
             f"- device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU smoke test'}), "
             f"torch {torch.__version__}, date {time.strftime('%Y-%m-%d')}",
             f"- data: 10 synthetic classes × 24, 32³ at 10 Å, SNR 1 (Fourier route); {args.episodes} training "
             "episodes per method", "",
             "## 1–2. Training on the device, and agreement with the CPU", "",
             "| method | train volumes/s | GPU utilisation while training | bf16 loss vs fp32 CPU (rel.) | "
             "score max diff | argmax agreement | probability max diff |", "|---|---|---|---|---|---|---|"]
    registry = get_plugins().methods
    test = sample_episodes(data, EpisodeSpec("test", 4, 1, 4, 0), 10)
    for name, variant in METHODS:
        cls = registry.get(name)
        on_device = cls(None, variant, device)
        context = fit_context(data, 1.0, on_device.segments, Budget(episodes=args.episodes), device, seed=0)
        with Utilisation(device) as utilisation:
            start = time.perf_counter()
            report = on_device.fit(context)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        on_cpu = cls(None, variant, "cpu")
        on_cpu.load_state(on_device.state())  # state() is on the CPU already
        score_diff, agree, probability_diff = 0.0, [], 0.0
        for i in range(len(test)):
            item = load_episode(data, test, i, 1.0, with_masks=on_device.segments)
            a, b = on_device.predict(item), on_cpu.predict(item)
            score_diff = max(score_diff, float((a.scores - b.scores).abs().max()))
            agree.append(float((a.scores.argmax(1) == b.scores.argmax(1)).float().mean()))
            if a.probabilities is not None:
                probability_diff = max(probability_diff, float((a.probabilities - b.probabilities).abs().max()))
        # Losses last: a training-mode forward updates batch-norm statistics.
        episode = context.train.sample(5, 1, 5, np.random.default_rng(1))
        on_device.network.train()
        on_cpu.network.train()
        with torch.no_grad():
            with on_device.autocast(training=True):
                device_loss = float(on_device.training_loss(episode.to(device)))
            cpu_loss = float(on_cpu.training_loss(episode.to("cpu")))
        label = name if variant is None else f"{name}/{variant}"
        volumes = report.examples / seconds
        lines.append(f"| {label} | {volumes:.0f} | {utilisation.text()} | "
                     f"{abs(device_loss - cpu_loss) / max(abs(cpu_loss), 1e-12):.2e} | {score_diff:.2e} | "
                     f"{np.mean(agree):.3f} | {probability_diff:.2e} |")
        print(lines[-1], flush=True)
    if not args.no_speed:
        from cosnet_speed import measure

        lines += ["", "## 3. COS-Net paper profile against the plain published network", "",
                  *[line for line in measure(device) if line.startswith(("|", "- outputs"))]]
    with Utilisation(device) as utilisation:
        frame = api.bench(["protonet"], dataset=data, snrs=[1.0], ways=[4], episodes=50, budget=f"{args.episodes}ep",
                          device=str(device), store=work / "bench.sqlite")
    lines += ["", "## 4. One bench cell end to end", "",
              f"protonet, 4-way 1-shot, 50 test episodes: accuracy {frame['accuracy'].mean():.3f}, "
              f"device recorded {sorted(set(frame['device']))}, GPU utilisation {utilisation.text()}."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
