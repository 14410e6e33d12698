"""Throughput of ``fsc bench --workers 2`` against one worker, on the cores of this machine.

One CPU grid (trainable and training-free methods, two training seeds, four N-way settings) is
run three ways into fresh SQLite stores, each timed from start to the last stored episode:

* one worker pinned to one torch thread (the unit a worker gets with ``--workers 2`` on 2 cores);
* one worker with every core (torch's default threads);
* ``--workers 2``: two processes, the cores split evenly between them (one thread each on 2 cores).

Throughput is test episodes stored per second of wall time. The stores must hold the same
numbers (checked). A run already complete in ``--work`` is not repeated, so an interrupted
benchmark resumes. Writes ``benchmarks/results/workers_throughput.md``.

Run:  python benchmarks/workers_throughput.py --work /tmp/fsc-workers
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

GRID = ["--methods", "protonet,siamese,xcorr,radial", "--seeds", "0,1", "--budget", "150ep", "--snr", "0.5",
        "--ways", "2,4,6,8", "--episodes", "200", "--queries-per-class", "2", "--device", "cpu"]
RUNS = {  # name: (extra options, environment)
    "1 worker × 1 thread": ([], {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}),
    f"1 worker × {os.cpu_count()} threads": ([], {}),
    "2 workers (--workers 2)": (["--workers", "2"], {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fsc-workers"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "workers_throughput.md")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if not (data / "manifest.json").exists():
        subprocess.run(["fsc", "simulate", "--per-class", "30", "--snr", "0.5", "--out", str(data),
                        "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    timings_file = work / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    for index, (name, (extra, env)) in enumerate(RUNS.items()):
        if name in timings:
            continue
        store = work / f"run{index}.sqlite"
        for leftover in work.glob(f"run{index}.*"):  # an interrupted run starts again: it is timed
            subprocess.run(["rm", "-rf", str(leftover)], check=True)
        start = time.perf_counter()
        subprocess.run(["fsc", "bench", *GRID, "--dataset", str(data), "--store", str(store), *extra], check=True,
                       env=dict(os.environ, **env), stdout=subprocess.DEVNULL)
        timings[name] = {"seconds": time.perf_counter() - start, "store": str(store)}
        timings_file.write_text(json.dumps(timings, indent=1))
        print(f"{name}: {timings[name]['seconds']:.0f} s", flush=True)
    write(timings, args.out)


def write(timings: dict, out: Path) -> None:
    from fewshot_cryoet.results.store import ResultsStore

    frames = {}
    for name, timing in timings.items():
        with ResultsStore(timing["store"], create=False) as store:
            frames[name] = store.frame()
    reference = next(iter(frames.values()))
    key = ["label", "train_seed", "n_way", "episode"]
    rows = []
    for name, frame in frames.items():
        merged = reference.merge(frame, on=key, suffixes=("", "_run"))
        same = len(merged) == len(reference) == len(frame)
        worst = (merged["accuracy"] - merged["accuracy_run"]).abs().max()
        rows.append({"run": name, "episodes": len(frame), "wall (s)": round(timings[name]["seconds"]),
                     "episodes/s": round(len(frame) / timings[name]["seconds"], 2),
                     "max |Δ accuracy| vs first": f"{worst:.3g}" if same else "different rows"})
    table = pd.DataFrame(rows)
    one_thread = table["episodes/s"].iloc[0]
    all_threads = table["episodes/s"].iloc[1]
    both = table["episodes/s"].iloc[2]
    lines = [
        "# `fsc bench --workers 2` throughput",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, measured {time.strftime('%Y-%m-%d')} with "
        "`python benchmarks/workers_throughput.py`.",
        "",
        "Grid: `fsc bench " + " ".join(GRID) + "` on a simulated folder (22 synthetic classes × 30, SNR 0.5),",
        "i.e. 4 trainings (2 methods × 2 seeds) and 6 method rows × 4 N-way × 200 test episodes.",
        "",
        table.to_markdown(index=False),
        "",
        f"* Two workers against one worker pinned to one thread: **{both / one_thread:.2f}×**.",
        f"* Two workers against one worker using all {os.cpu_count()} cores: **{both / all_threads:.2f}×**.",
        "* Core split: with `--workers N` on CPUs, each worker gets `cores // N` torch threads (at least one;"
        " `OMP_NUM_THREADS` for the started workers, `torch.set_num_threads` for the first).",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    sys.exit(main())
