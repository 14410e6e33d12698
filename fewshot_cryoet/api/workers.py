"""Local worker processes for one grid (``fsc bench --workers N``): the same command started
``N − 1`` more times with ``--worker``, each on its own GPU where several are visible or on its
share of the CPU cores, all stopped when the command that started them stops early."""

from __future__ import annotations

import subprocess
import sys

from fewshot_cryoet.core.local_workers import cpu_threads, launch, stopped_on_exit, thread_env
from fewshot_cryoet.results.location import StoreLocation

__all__ = ["start_workers", "stopped_on_exit"]


def start_workers(argv: list[str], workers: int, store: StoreLocation, device: str,
                  helpers: list[subprocess.Popen]) -> str:
    """``workers − 1`` more processes running ``fsc ARGV --worker`` (this one is the first), added
    to ``helpers`` as each starts; each writes its log in ``<store>.workers/``. With several GPUs
    visible and ``device`` auto or cuda, worker i sees only GPU i mod the count; otherwise the CPU
    cores are split evenly (at least one torch thread each), so the workers do not fight over
    them. Returns the sentence that says so."""
    import torch

    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    threads = cpu_threads(workers)
    if gpus <= 1:
        torch.set_num_threads(threads)
    logs = store.sibling(".workers")
    for i in range(1, workers):
        devices = {"CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus > 1 else thread_env(threads)
        launch([sys.executable, "-m", "fewshot_cryoet", *argv, "--worker"], logs / f"worker-{i + 1}.log",
               {"FSC_WORKER": str(i + 1), **devices}, helpers)
    split = f"one GPU each ({gpus} visible)" if gpus > 1 else f"{threads} CPU thread(s) each"
    return f"started {workers - 1} more worker(s) on {store}, {split}; their logs: {logs}/"
