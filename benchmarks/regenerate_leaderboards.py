"""Regenerate every committed leaderboard page, resumably, and record how long each page took.

Why a driver: the pages under ``leaderboards/`` are made by a dozen commands spread over their
READMEs, and the project's goal is that all of them, at three training seeds, fit in one working
day on 2 cores. This runs exactly the commands the pages document (``tests/test_regeneration.py``
checks that each page's README shows its step's commands), in order, and keeps a log of finished
steps and their wall time in ``--times`` (JSON). Every bench resumes (``--resume``), and a step
recorded as finished is skipped, so an interrupted regeneration continues where it stopped, across
sessions as long as the stores, checkpoints and the log survive. Time spent in interrupted
attempts is added to the step's total, so the log's sum is the real cost.

Run from the repository root, with ``../shared`` beside it:

    python benchmarks/regenerate_leaderboards.py                 # everything, in order
    python benchmarks/regenerate_leaderboards.py --list          # the steps and their commands
    python benchmarks/regenerate_leaderboards.py --only budgets  # one page (and what it needs)
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fewshot_cryoet.core.outputs import write_json

TEMPLATES = "../shared/data/templates"
SHARED = "data/st"  # the shared templates simulated once; several pages read it
SIMULATE_SHARED = ("fsc simulate --templates ../shared/data/templates --snr 1000 --snr 0.5 --snr 0.1 --snr 0.05 "
                   "--snr 0.02 --out data/st")
CURVE_METHODS = "protonet,siamese,cosnet/scnn,cosnet/scnn-decoder,cosnet/duse,cosnet/duse-decoder"
PAPER = "data/paper"  # Table 1's SNR levels, for the paper profile's run
SIMULATE_PAPER = "fsc simulate --templates ../shared/data/templates --snr inf --snr 1000 --snr 0.5 --out data/paper"
TABLE_ONE_METHODS = "cosnet/scnn,cosnet/scnn-decoder,cosnet/duse,cosnet/duse-decoder"


@dataclass(frozen=True)
class Step:
    """One page (or the data it needs): shell commands run in order from the repository root.
    ``creates`` is a path the step makes and whose presence means it was done before this log
    existed (``fsc simulate`` refuses an existing folder rather than overwrite it)."""

    name: str
    commands: tuple[str, ...]
    page: str | None = None  # the README that documents these commands
    creates: str | None = None
    needs: tuple[str, ...] = ()


STEPS: tuple[Step, ...] = (
    Step("synthetic", ("fsc bench --seeds 0,1,2 --resume", "fsc leaderboard"), page="README.md"),
    Step("simulate-shared", (SIMULATE_SHARED,), creates=SHARED),
    Step("shared-templates", (
        "fsc bench --dataset data/st --methods protonet,siamese,xcorr,radial --snr 0.5 --snr 0.02 --ways 2,4,6,8 "
        "--episodes 600 --seeds 0,1,2 --store shrec.sqlite --resume",
        "fsc bench --dataset data/st --methods cosnet/duse-decoder --snr 0.5 --snr 0.02 --ways 2,4,6,8 "
        "--episodes 600 --seeds 0,1,2 --store shrec.sqlite --resume",
        "fsc leaderboard --store shrec.sqlite --out leaderboards/shared-templates",
    ), page="leaderboards/shared-templates/README.md", needs=("simulate-shared",)),
    Step("cpu-profile", (
        "fsc bench --dataset data/st --methods cosnet/duse-decoder --snr 0.5 --ways 6 --budget 5m --episodes 600 "
        "--seeds 0,1,2 --store cpu-profile.sqlite --resume",
        "fsc bench --dataset data/st --methods cosnet/duse-decoder --param cosnet.profile=paper "
        "--param cosnet.channels=16 --param cosnet.embedding=128 --snr 0.5 --ways 6 --budget 5m --episodes 600 "
        "--seeds 0,1,2 --store cpu-profile.sqlite --resume",
        "fsc leaderboard --store cpu-profile.sqlite --out leaderboards/cpu-profile",
    ), page="leaderboards/cpu-profile/README.md", needs=("simulate-shared",)),
    Step("budgets", (
        f"fsc bench --dataset data/st --methods {CURVE_METHODS} --snr 0.5 --ways 6 --budget 100ep --budget 300ep "
        "--budget 1000ep --episodes 600 --seeds 0,1,2 --store curves.sqlite --resume",
        "fsc leaderboard --store curves.sqlite --out leaderboards/shared-templates-budgets",
    ), page="leaderboards/shared-templates-budgets/README.md", needs=("simulate-shared",)),
    Step("robustness", (
        "python benchmarks/robustness.py --templates ../shared/data/templates --work robustness-work --seeds 0,1,2 "
        "--out leaderboards/robustness",
    ), page="benchmarks/robustness.py"),
    Step("simulate-paper", (SIMULATE_PAPER,), creates=PAPER),
    Step("paper", (
        f"fsc bench --dataset data/paper --methods {TABLE_ONE_METHODS} --param cosnet.profile=paper --budget 150ep "
        "--store paper.sqlite --resume --archive leaderboards/paper-results",
        "python benchmarks/paper_comparison.py --store paper.sqlite --out leaderboards/README.md",
    ), page="leaderboards/README.md", needs=("simulate-paper",)),
)

#: How often a running command's wall time is added to the log (see ``run_counted``).
LOG_EVERY_SECONDS = 60.0
WORKER_COMMANDS = ("fsc bench ", "python benchmarks/robustness.py ")  # the commands --workers applies to


def outputs(step: Step) -> list[str]:
    """The leaderboard folders (or files) a step writes, read off its commands' ``--out`` and
    ``--archive`` (a bench's committed results), or ``leaderboards/synthetic`` for the README
    main job's ``fsc leaderboard``."""
    found = []
    for command in step.commands:
        words = shlex.split(command)
        found += [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("--out", "--archive")]
        if words[:2] == ["fsc", "leaderboard"] and "--out" not in words:
            found.append("leaderboards/synthetic")
    return [f for f in found if f.startswith("leaderboards")]


def plan(only: list[str] | None) -> list[Step]:
    """The steps to run: all, or those named with the steps they need, in the fixed order."""
    by_name = {step.name: step for step in STEPS}
    if not only:
        return list(STEPS)
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise SystemExit(f"--only {', '.join(unknown)}: no such step (steps: {', '.join(by_name)})")
    wanted = set(only)
    for name in only:
        wanted.update(by_name[name].needs)
    return [step for step in STEPS if step.name in wanted]


def with_workers(command: str, workers: int) -> str:
    return f"{command} --workers {workers}" if workers > 1 and command.startswith(WORKER_COMMANDS) else command


def load_log(path: Path) -> dict:
    if not path.exists():
        return {"steps": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{path}: not a regeneration log ({exc}); pass another --times") from None


def run_counted(command: str, root: Path, entry: dict, save: Callable[[], None],
                every: float = LOG_EVERY_SECONDS) -> int:
    """Run ``command`` in a shell from ``root`` and return its exit status, adding its wall time
    to ``entry["seconds"]`` and calling ``save`` every ``every`` seconds while it runs, and once
    when it ends. Why not only at the end: an attempt killed without warning (SIGKILL when a
    session or machine goes away) would otherwise leave no trace, and the log's sum would no
    longer be the real cost; this way at most ``every`` seconds of it go uncounted."""
    process = subprocess.Popen(command, shell=True, cwd=root)
    counted = time.perf_counter()
    try:
        while True:
            try:
                return process.wait(timeout=every)
            except subprocess.TimeoutExpired:
                pass
            finally:
                now = time.perf_counter()
                entry["seconds"] += now - counted
                counted = now
                save()
    except BaseException:  # Ctrl-C in this driver: stop the command too, as subprocess.run does
        process.kill()
        process.wait()
        raise


def with_device(command: str, device: str) -> str:
    """``fsc bench`` on ``device`` (auto: as fsc chooses, a GPU where there is one)."""
    return f"{command} --device {device}" if device != "auto" and command.startswith("fsc bench ") else command


def describe_device(device: str) -> str:
    """What the steps run on, as the log records it: ``cuda: NVIDIA H200`` or ``cpu: 2 cores``."""
    import os

    import torch

    if device != "cpu" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {os.cpu_count()} cores"


def check_device(log: dict, device: str, where: Path) -> str:
    """The device description for this run, refusing ``--device cuda`` without a GPU and a log
    (hence stores and checkpoints) from another kind of device: the benches resume by cell and
    would keep the other device's models, so a GPU regeneration starts in a fresh clone."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible here")
    described = describe_device(device)
    kinds = {e["device"].split(":")[0] for e in log["steps"].values() if e.get("device") and e["seconds"] > 0}
    other = kinds - {described.split(":")[0]}
    if other:
        raise SystemExit(f"{where}: its steps ran on {', '.join(sorted(other))}; the stores and checkpoints here are "
                         f"theirs. Regenerate on {described.split(':')[0]} in a fresh clone beside ../shared")
    return described


def run_steps(steps: list[Step], times: Path, workers: int = 1, root: Path = Path("."), device: str = "auto") -> dict:
    """Run the steps not yet finished (by the log at ``times``), each command in a shell from
    ``root``; stop at the first failing command with its exit status. Wall time of every attempt,
    finished or not, is added to the step's ``seconds``, with the device it ran on."""
    log = load_log(times)
    described = check_device(log, device, times)
    for step in steps:
        entry = log["steps"].setdefault(step.name, {"seconds": 0.0, "finished": None})
        entry["device"] = described
        if entry["finished"]:
            print(f"{step.name}: finished {entry['finished']} in {entry['seconds'] / 60:.1f} min; skipped", flush=True)
            continue
        if step.creates and (root / step.creates).exists() and entry["seconds"] == 0:
            print(f"{step.name}: {step.creates} exists already (made before this log); skipped, time not counted",
                  flush=True)
            entry["finished"], entry["note"] = time.strftime("%Y-%m-%d %H:%M"), "existed before the log"
            write_json(times, log)
            continue
        for command in step.commands:
            command = with_device(with_workers(command, workers), device)
            print(f"{step.name}: {command}", flush=True)
            status = run_counted(command, root, entry, lambda: write_json(times, log))
            if status != 0:
                raise SystemExit(f"{step.name}: `{command}` exited with status {status}; fix it and run again "
                                 "(finished steps are skipped, benches resume)")
        entry["finished"], entry["workers"] = time.strftime("%Y-%m-%d %H:%M"), workers
        write_json(times, log)
    return log


def summary(log: dict) -> str:
    lines = ["| step | wall time | device | finished |", "|---|---|---|---|"]
    total = 0.0
    for step in STEPS:
        entry = log["steps"].get(step.name)
        if entry is None:
            continue
        total += entry["seconds"]
        minutes = entry["seconds"] / 60
        lines.append(f"| {step.name} | {int(minutes // 60)} h {minutes % 60:.0f} min | {entry.get('device', '')} | "
                     f"{entry['finished'] or 'not yet'} |")
    lines.append(f"| **total** | **{int(total // 3600)} h {total % 3600 / 60:.0f} min** | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="Comma-separated steps (with the steps they need) [all].")
    parser.add_argument("--workers", type=int, default=1, help="Passed to every fsc bench (one process per core "
                        "on a CPU machine: --workers 2 on 2 cores) [1].")
    parser.add_argument("--times", type=Path, default=Path("regeneration-times.json"),
                        help="The log of finished steps and their wall time [regeneration-times.json].")
    parser.add_argument("--list", action="store_true", help="Print the steps and their commands, run nothing.")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="Passed to every fsc bench and recorded per step in the log (cuda: refused without a "
                             "GPU; on a GPU the README's main job includes COS-Net) [auto].")
    args = parser.parse_args()
    if args.workers < 1:
        raise SystemExit(f"--workers {args.workers}: give 1 or more")
    steps = plan(args.only.split(",") if args.only else None)
    if args.list:
        for step in steps:
            print(f"{step.name}:" + "".join(f"\n  {with_device(with_workers(c, args.workers), args.device)}"
                                            for c in step.commands))
        return
    if any(TEMPLATES in c for step in steps for c in step.commands) and not Path(TEMPLATES).is_dir():
        raise SystemExit(f"{TEMPLATES}: not found; the committed pages are made from the shared templates "
                         "beside the checkout")
    log = run_steps(steps, args.times, args.workers, device=args.device)
    print(summary(log))


if __name__ == "__main__":
    sys.exit(main())
