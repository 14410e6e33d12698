"""COS-Net's segmentation across imaging domains as its training budget grows (issue 34's goal:
raw Dice ≥ 0.75 on every domain; at 400 episodes the robustness page has 0.38–0.58).

One COS-Net per training seed is trained on the training classes of one domain (``--train``: a
route, or ``randomised``, the maps with domain-randomised imaging) and snapshotted at every budget
of ``--budgets`` (one training, ``api.bench``'s budget curve), then tested with the same
checkpoints on the test classes of each domain of ``cross_route.py``'s data: the tilt-series
route, the independent direct-Fourier route and the all-shifted imaging. No test class is trained
on. Each run adds to one store; the page shows every training domain and budget run so far. Raw
Dice is the decoder's mask at probability 0.5 (no CRF), averaged over every query.

``--domains all`` adds every single imaging shift (``shift-*``, simulated by ``cross_route.py
--single-shifts``); ``--param`` trains with a hyper-parameter changed (rows then carry it in their
name); a prior-mask row per main domain shows the Dice of a mask that never looks at the volume.

Run after ``cross_route.py --shifted --randomised`` has simulated its data:
    python benchmarks/cosnet_dice.py --budgets 400ep,1500ep,3000ep --seeds 0
    python benchmarks/cosnet_dice.py --train randomised --budgets 400ep,1500ep --seeds 0
    python benchmarks/cosnet_dice.py --train randomised --budgets 3000ep,6000ep --seeds 0
    python benchmarks/cosnet_dice.py --train randomised --budgets 3000ep --seeds 0,1
(the runs of ``benchmarks/results/cosnet_dice_2026-12-05.md``), and in a fresh ``--work`` after
``cross_route.py --single-shifts``:
    python benchmarks/cosnet_dice.py --train randomised --budgets 1500ep --seeds 0 --domains all
    python benchmarks/cosnet_dice.py --train all-shifted --budgets 1500ep --seeds 0
    python benchmarks/cosnet_dice.py --train randomised --param train_turns=4 --budgets 1500ep --seeds 0 \
        --domains all-shifted,tilt-series,direct-fourier,shift-pixel-size,shift-narrow-tilts,shift-structured-background
    python benchmarks/cosnet_dice.py --train all-shifted --budgets 3000ep,6000ep --seeds 0 --domains all-shifted
    python benchmarks/cosnet_dice.py --train randomised --budgets 3000ep --seeds 0,1,2 --domains all
(the runs of ``benchmarks/results/cosnet_dice_domains_2026-12-05.md``).
It resumes from its store and writes ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paired_rows import write_page

from fewshot_cryoet import api
from fewshot_cryoet.core.reporting import CallbackReporter
from fewshot_cryoet.datasets.dataset import snr_label

DOMAINS = ("tilt-series", "direct-fourier", "all-shifted")
METHOD = "cosnet/duse-decoder"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("cross-route-work/data"),
                        help="cross_route.py's simulated data sets (one folder per domain).")
    parser.add_argument("--work", type=Path, default=Path("cosnet-dice-work"), help="The store and models.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cosnet_dice.md"))
    parser.add_argument("--train", default="tilt-series", help="The domain whose training classes train COS-Net: a route, or randomised.")
    parser.add_argument("--budgets", default="400ep,1500ep", help="Snapshots of one training, comma-separated.")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--snr", type=float, default=0.5)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--domains", default=",".join(DOMAINS),
                        help="The test domains, comma-separated: folders of --data (a route, all-shifted, or one "
                             "imaging shift such as shift-near-focus); all: those three and every shift-* folder.")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="A COS-Net hyper-parameter other than its default, as fsc bench --param takes it "
                             "without the method (train_turns=4, tta=4, input_lowpass=30); repeatable.")
    args = parser.parse_args(argv)
    domains = [*DOMAINS, *sorted(p.name for p in args.data.glob("shift-*"))] if args.domains == "all" \
        else args.domains.split(",")
    missing = [d for d in dict.fromkeys([args.train, *domains]) if not (args.data / d / "manifest.json").exists()]
    if missing:
        sys.exit(f"{args.data}: no simulated data set for {', '.join(missing)}; run cross_route.py --shifted "
                 "(--single-shifts for the shift-* domains) first")
    budgets, seeds = args.budgets.split(","), [int(s) for s in args.seeds.split(",")]
    log = CallbackReporter(on_progress=None, on_log=lambda line: print(line, flush=True))
    store = args.work / "cosnet-dice.sqlite"
    args.work.mkdir(parents=True, exist_ok=True)
    params = api.parse_param_overrides([f"{METHOD.split('/')[0]}.{text}" for text in args.param]) or None
    for domain in domains:  # the first test trains (and snapshots); the others reuse its checkpoints
        print(f"COS-Net trained on {args.train} {' '.join(args.param)}, tested on {domain}", flush=True)
        frame = api.bench([METHOD], dataset=args.data / domain, snrs=[args.snr], ways=[6], episodes=args.episodes,
                          budget=budgets, store=store, resume=True, seeds=seeds, crf=False, reporter=log,
                          train_dataset=None if domain == args.train else args.data / args.train, params=params)
        if frame.attrs["failures"]:
            sys.exit("; ".join(frame.attrs["failures"]))
    write(store, args)


def write(store: Path, args: argparse.Namespace) -> None:
    """The page, from every row of the store: each training domain run so far, each budget."""
    from fewshot_cryoet.results.store import ResultsStore

    with ResultsStore(store, create=False) as results:
        frame = results.frame()
    frame = frame[frame["snr"] == snr_label(args.snr)]
    frame = frame.assign(trained=frame["train_dataset"].where(frame["train_dataset"] != "", frame["dataset"]))
    table = []

    def order(domain: str) -> tuple[int, str]:  # the routes and all-shifted first, then single shifts by name
        return (DOMAINS.index(domain), "") if domain in DOMAINS else (len(DOMAINS), domain)

    for (trained, label, budget, domain), rows in sorted(
            frame.groupby(["trained", "label", "budget", "dataset"]),
            key=lambda item: (item[0][0], item[0][1], int(item[0][2].rstrip("ep")), order(item[0][3]))):
        per_seed = rows.groupby(rows["train_seed"].fillna(0))
        table.append({"trained on": trained, "model": label, "budget": budget, "tested on": domain,
                      "accuracy": f"{rows['accuracy'].mean():.3f}",
                      "raw Dice": f"{rows['dice'].mean():.3f}",
                      "raw Dice per seed": ", ".join(f"{d:.3f}" for d in per_seed["dice"].mean()),
                      "training seconds": f"{rows['fit_seconds'].mean():.0f}"})
    # The single shifts image the tilt-series route's particles (same poses, same masks), so the
    # prior's row for that route holds for them; only the three main domains get one.
    for trained, domain in sorted({(t, d) for t, d in zip(frame["trained"], frame["dataset"]) if d in DOMAINS},
                                  key=lambda pair: (pair[0], order(pair[1]))):
        table.append({"trained on": trained, "model": "prior mask (no network)", "budget": "—", "tested on": domain,
                      "accuracy": "—", "raw Dice": f"{prior_dice(args.data / trained, args.data / domain):.3f}",
                      "raw Dice per seed": "—", "training seconds": "—"})
    write_page(args.out, "COS-Net's raw Dice across imaging domains against its training budget", "cosnet_dice.py",
               f"COS-Net DuSE w decoder (`cpu` profile) trained on the training classes of the domain in "
               f"\"trained on\" at SNR {args.snr:g} (one training per seed, snapshotted at each budget), "
               f"tested 6-way 1-shot on {args.episodes} episodes of each domain's test classes with the same "
               "checkpoint. Raw Dice: the decoder's mask at probability 0.5, no CRF; the goal is ≥ 0.75 on every "
               "domain. Training seconds: the whole training up to that budget, validation included. The prior "
               "mask is what a segmenter that never looks at the volume scores: the training classes' mean mask, "
               "cut at the level best on the test particles themselves (an upper bound for any cut), against every "
               "test-class particle; what the decoder learned from the volume is its Dice above this row (the "
               "single shifts and all-shifted image the tilt-series route's particles, masks included, so they share "
               "its prior).", table)


def prior_dice(train: Path, test: Path) -> float:
    """Mean Dice over ``test``'s test-class particles of one mask for all: the mean of ``train``'s
    training-class masks above the level (0.05–0.95) best on those test particles, so an upper
    bound for this prior (a level chosen on validation classes scored lower). Particles are
    centred, so the prior is far from zero; a decoder must beat it to have learned the particle's
    shape from the volume."""
    import numpy as np
    import torch

    from fewshot_cryoet.evaluation.metrics import dice

    source, target = api.open_dataset(train), api.open_dataset(test)
    mean = torch.from_numpy(source.masks[np.sort(source.indices("train"))].mean(axis=0))
    truth = torch.from_numpy(np.asarray(target.masks[np.sort(target.indices("test"))]))
    return max(float(dice((mean > level).expand_as(truth), truth).mean()) for level in np.arange(0.05, 0.96, 0.05))


if __name__ == "__main__":
    main()
