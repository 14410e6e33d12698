"""Simulator throughput: subtomograms per second, every imaging route, 32³, 61 tilts.

Run:  python benchmarks/simulate_speed.py [--particles 512] [--out benchmarks/results/simulate_speed.md]

Measures (1) the simulator core (render + image + noise at one SNR) in the chunk size the data set
builder uses, and (2) the whole ``simulate_dataset`` call (planning, simulation, writing the
memory-mapped files and the content hash) on the 22 synthetic classes. Goals from the issue:
fourier ≥ 300/s and tilt-series ≥ 50/s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fewshot_cryoet.datasets.build import CHUNK, simulate_dataset
from fewshot_cryoet.datasets.simulate import ROUTES, SimulationConfig, Simulator, add_noise, make_plan
from fewshot_cryoet.datasets.synthetic import synthetic_templates


def core_rate(templates, config: SimulationConfig, particles: int) -> float:
    plan = make_plan(templates, max(1, particles // len(templates)), config, seed=0)
    simulator = Simulator(templates, config)
    n = len(plan)
    rates = []
    for _ in range(2):  # the first pass warms up operators and FFT plans; report the second
        start = time.perf_counter()
        for lo in range(0, n, CHUNK):
            batch = simulator.simulate(plan, np.arange(lo, min(lo + CHUNK, n)))
            add_noise(batch, 0.5)
        rates.append(n / (time.perf_counter() - start))
    return rates[-1]


def dataset_rate(templates, config: SimulationConfig, particles: int, workers: int) -> float:
    folder = Path(tempfile.mkdtemp())
    try:
        start = time.perf_counter()
        ds = simulate_dataset(templates, folder / "d", [0.5], max(1, particles // len(templates)),
                              config, seed=0, workers=workers)
        return len(ds) / (time.perf_counter() - start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=528)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "simulate_speed.md")
    args = parser.parse_args()
    templates = synthetic_templates(22)
    rows = []
    for route in ROUTES:
        for crowding in ((0, 0), (0, 4)):
            config = SimulationConfig(route=route, crowding=crowding)
            rate = core_rate(templates, config, args.particles)
            rows.append((route, f"{crowding[0]}-{crowding[1]}", "simulator core, 1 process", rate))
            print(rows[-1], flush=True)
        config = SimulationConfig(route=route)
        for workers in (1, 2):
            rate = dataset_rate(templates, config, args.particles, workers)
            rows.append((route, "0-0", f"simulate_dataset, {workers} worker(s), incl. writing", rate))
            print(rows[-1], flush=True)
    lines = [
        "# Simulator throughput",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), CPU only",
        f"- {args.particles} particles of 22 synthetic classes, box 32³ at 10 Å, 61 tilts (−60…+60° step 2°), "
        "SNR 0.5, chunks of 16",
        f"- date: {time.strftime('%Y-%m-%d')}",
        "",
        "| route | crowding | what | subtomograms / s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r} | {c} | {w} | {v:.0f} |" for r, c, w, v in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
