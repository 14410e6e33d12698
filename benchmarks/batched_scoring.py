"""Scoring a chunk of test episodes together (``predict_many`` with a volume batch) against episode
by episode, per method and device: time, and how far the scores move.

Run:  python benchmarks/batched_scoring.py [--device cuda] [--episodes 200] [--out FILE]

The data are the main job's (``fsc bench``'s default synthetic set at SNR 1000, simulated once into
the cache); methods are untrained (scoring time does not depend on the weights), 8-way 1-shot with
5 queries per class, the runner's chunks of 50 episodes. For each method: episodes per second both
ways (a fresh instance each, so every embedding is computed once in each), the largest score
difference and the share of queries whose predicted class agrees. ``--score-batch``'s default per
device (``evaluation.grid.SCORE_BATCH_AUTO``) follows these numbers.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from fewshot_cryoet import api
from fewshot_cryoet.episodes import EpisodeSpec, load_episode, sample_episodes
from fewshot_cryoet.evaluation.grid import EVAL_CHUNK
from fewshot_cryoet.plugins import get_plugins

METHODS = (("protonet", None, {}), ("siamese", None, {}), ("cosnet", "duse-decoder", {}),
           ("cosnet", "duse-decoder", {"profile": "paper"}))


def timed(method, episodes, batch: int, device: torch.device) -> tuple[float, list]:
    start = time.perf_counter()
    predictions = []
    for first in range(0, len(episodes), EVAL_CHUNK):
        predictions += method.predict_many(episodes[first:first + EVAL_CHUNK], batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(episodes) / (time.perf_counter() - start), predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--skip-paper", action="store_true", help="Leave out the paper profile (slow on CPUs).")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    data = api.data_source(None).at(1000.0)
    chosen = sample_episodes(data, EpisodeSpec("test", 8, 1, 5, seed=0), args.episodes)
    episodes = [load_episode(data, chosen, number, 1000.0) for number in range(args.episodes)]
    registry = get_plugins().methods
    lines = ["# Batched scoring against episode by episode", "",
             f"- device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
             f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
             f"date {time.strftime('%Y-%m-%d')}",
             f"- {args.episodes} test episodes of the main job's data (8-way 1-shot, 5 queries per class, SNR 1000), "
             f"in chunks of {EVAL_CHUNK}; batched: {args.batch} volumes per call; untrained models", "",
             "| method | episode by episode (episodes/s) | batched (episodes/s) | speed-up | max score difference | "
             "same predicted class |", "|---|---|---|---|---|---|"]
    for name, variant, params in METHODS:
        if args.skip_paper and params.get("profile") == "paper":
            continue
        cls = registry.get(name)
        one, plain = timed(cls(params, variant, device), episodes, 0, device)
        many, batched = timed(cls(params, variant, device), episodes, args.batch, device)
        difference = max(float((a.scores - b.scores).abs().max()) for a, b in zip(plain, batched))
        agree = torch.cat([a.scores.argmax(1) == b.scores.argmax(1) for a, b in zip(plain, batched)]).float().mean()
        label = cls.display_label(*cls.resolve(params, variant))
        lines.append(f"| {label} | {one:.1f} | {many:.1f} | {many / one:.2f}× | {difference:.1e} | {float(agree):.4f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
