"""The project's own cross-simulator test: a learned method trained on one imaging route and tested
on another, both ways, beside template matching. Route A is the default tilt-series route; route
B is ``direct-fourier`` (``fewshot_cryoet.datasets.direct_fourier``), written apart from it: central
slices, dose damage, detector, phase flipping, direct Fourier inversion, its own mask and RELION
normalisation. The same templates, particles per class and split seed give both routes the same
test classes, so no trained class is tested; every row of one test set is scored on the same
episodes, so differences are paired.

``--robust-inputs`` adds each learned method with the robust input settings (low-pass, z-scored
inside a sphere), which should undo the routes' different normalisations (issue 34, item 3).

``--synthetic N`` adds models trained on N synthetic classes beside the maps' training classes,
imaged by each route (class diversity across simulators).

``--randomised`` adds models trained on data imaged with the ``randomised`` preset (tilt-series
route, every imaging setting drawn per particle from wide ranges, as ``fsc train`` simulates by
default): on the maps' training classes and, with ``--synthetic N``, on N synthetic classes beside
them. Neither test route's imaging is the training imaging then, so both columns are cross-route.

``--recipes`` adds ``fsc train``'s default training data without maps, imaged with the
``randomised`` preset: the earlier default (the 22 synthetic classes of the ``synthetic`` set, 100
subtomograms each) and the current one (``synthetic-512``: 512 synthetic classes of 20, 32 of
them validating), so the default recipe is chosen on unseen maps imaged by both routes.

``--single-shifts`` adds one test set per single imaging shift of ``datasets.presets`` (SNR 0.5
only), tested with the randomised-imaging models (the maps', and ``fsc train``'s default data
with ``--recipes``) and xcorr: the goal is a learned method ≥ xcorr on every shift.

``--turns`` adds each model trained on a route, on the maps' randomised data or (with
``--recipes``) on fsc train's default data once more with rotation augmentation (``train_turns=4``:
every training volume turned by a random rotation that keeps the missing wedge in place; issue 34,
item 3), tested on every test set the model without it is tested on.

``--spectra`` (with ``--methods matched``) adds each matched model trained on a route or on the
maps' randomised data once more with random spectral distortion in training (``train_spectra=1``:
each training volume's log gains at the band nodes drawn from N(0, 1)), which should keep its
adaptive filter from learning one route's spectrum.

``--background`` (with ``--methods matched``) adds the matched model trained on the maps'
randomised data once more with a random 1/f background added to each training volume
(``train_background=1``: its variance a share U(0, 1) of the volume's), so its adaptive filter
meets noise of other colours than the randomised preset's fixed 30% background.

``--shifted`` adds a third test set: the maps imaged with the ``all-shifted`` preset (every
imaging shift of ``leaderboards/robustness`` at once), tested with every model above (each is
trained once and reused: a training does not depend on what it is tested on) and xcorr.

``--methods`` names the learned methods (protonet by default); ``matched`` is learned template
matching (``fewshot_cryoet.methods.matched``), which starts as xcorr.

Run:  python benchmarks/cross_route.py --templates ../shared/data/templates [--robust-inputs] [--synthetic 512]
It resumes where it stopped (data sets and one store in ``--work``) and writes ``--out`` with every
row of the store, whichever command wrote it. ``cross_route_2026-12-05.md`` holds protonet's
``--synthetic 512 --randomised --recipes --shifted --single-shifts --turns``;
``cross_route_matched_2026-12-05.md`` holds, from a store of its own, ``--methods matched
--spectra --shifted``, then ``--methods matched --randomised --background --shifted
--single-shifts --snrs 0.5``, the same at ``--snrs inf`` without ``--single-shifts`` (with a
``--work`` of its own whose route data and store link to the first's, since the randomised data
are simulated at the levels of the run that first makes them), then ``--methods matched
--recipes --shifted --snrs 0.5`` in the first ``--work``. A rerun of any resumes every cell and
rewrites the page.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from paired_rows import episode_means, paired_text, seed_range, write_page

from fewshot_cryoet import api
from fewshot_cryoet.core.reporting import CallbackReporter
from fewshot_cryoet.datasets.dataset import snr_label
from fewshot_cryoet.datasets.providers import MANY_CLASSES_HELD_OUT
from fewshot_cryoet.datasets.simulate import SimulationConfig
from fewshot_cryoet.methods.inputs import ROBUST_INPUTS

ROUTES = ("tilt-series", "direct-fourier")
#: Rotation augmentation in training (``--turns``).
TURNS = {"train_turns": 4}
#: The randomised-imaging training sets trained once more with it: the maps' classes, and fsc
#: train's default data (with ``--recipes``).
TURNED_MIXED = ("randomised", "randomised-synthetic-512")
#: Random spectral distortion in matched's training (``--spectra``), on the routes and the maps'
#: randomised data.
SPECTRA = {"train_spectra": 1.0}
#: A random 1/f background added in matched's training (``--background``), on the maps' randomised data.
BACKGROUND = {"train_background": 1.0}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", default="../shared/data/templates")
    parser.add_argument("--work", type=Path, default=Path("cross-route-work"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cross_route.md"),
                        help="Markdown output (commit it dated)")
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--budget", default="300ep")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--snrs", default="inf,0.5", help="SNR levels, comma-separated (inf: noise-free).")
    parser.add_argument("--methods", default="protonet", help="Learned methods, comma-separated.")
    parser.add_argument("--robust-inputs", action="store_true",
                        help="Also each learned method with the robust input settings (low-pass 30 Å, z-scored "
                             "inside a sphere of 0.9 × half the box), which undo the routes' different normalisations.")
    parser.add_argument("--synthetic", type=int, default=0,
                        help="Also train on N synthetic classes mixed with the maps' training classes "
                             "(--templates synthetic:N maps/, the maps' test classes held out), imaged by each route.")
    parser.add_argument("--train-per-class", type=int, default=20, help="Subtomograms per class of those sets.")
    parser.add_argument("--recipes", action="store_true",
                        help="Also train on fsc train's earlier and current default data (synthetic classes only, "
                             "randomised imaging).")
    for flag, text in {  # switches, each adding rows (or, --page-only, running nothing)
        "--single-shifts": "Also test the randomised-imaging models on each single imaging shift (SNR 0.5).",
        "--shifted": "Also test every model on the maps imaged with the all-shifted preset.",
        "--randomised": "Also train on domain-randomised imaging (the randomised preset): the maps' training "
                        "classes, and with --synthetic N those beside N synthetic classes.",
        "--turns": "Also each model trained on a route, on the maps' randomised data or (with --recipes) on "
                   "fsc train's default data with rotation augmentation (train_turns=4).",
        "--page-only": "Write --out from the rows the store holds now, running nothing (e.g. while a run goes "
                       "on, or after one was stopped: a cell whose seeds are not all in is left out).",
        "--spectra": "With --methods matched: also each matched model trained on a route or on the maps' "
                     "randomised data with random spectral distortion in training (train_spectra=1).",
        "--background": "With --methods matched: also the matched model trained on the maps' randomised data "
                        "with a random 1/f background added to each training volume (train_background=1).",
    }.items():
        parser.add_argument(flag, action="store_true", help=text)
    args = parser.parse_args(argv)
    for flag in ("spectra", "background"):
        if getattr(args, flag) and args.methods != "matched":
            parser.error(f"--{flag} is a setting of matched only: use it with --methods matched")
    if args.background and not (args.randomised or args.page_only):
        parser.error("--background trains on the maps' randomised data: use it with --randomised")
    seeds = [int(s) for s in args.seeds.split(",")]
    store = args.work / "cross-route.sqlite"
    if args.page_only:
        write(store, args)
        return
    snrs = [float(s) for s in args.snrs.split(",")]
    log = CallbackReporter(on_progress=None, on_log=lambda line: print(line, flush=True))
    data = args.work / "data"
    folders = {route: simulated(data / route, f"route {route}", templates=[args.templates], snrs=snrs,
                                per_class=args.per_class, config=SimulationConfig(route=route)) for route in ROUTES}
    held_out = api.open_dataset(folders[ROUTES[0]]).splits  # the same maps and split seed: every route's splits
    maps_held_out = {"val_classes": held_out["val"], "test_classes": held_out["test"]}
    mixed = {}
    for route in ROUTES if args.synthetic else ():
        mixed[route] = simulated(data / f"{route}+synthetic-{args.synthetic}",
                                 f"route {route}: {args.synthetic} synthetic classes and the maps' training classes",
                                 templates=[f"synthetic:{args.synthetic}", args.templates], snrs=snrs,
                                 per_class=args.train_per_class, config=SimulationConfig(route=route), **maps_held_out)
    for name, templates, per_class in (([("randomised", [args.templates], args.per_class)] + (
            [(f"randomised+synthetic-{args.synthetic}", [f"synthetic:{args.synthetic}", args.templates],
              args.train_per_class)] if args.synthetic else [])) if args.randomised else []):
        mixed[name] = simulated(data / name, f"{name} (randomised imaging)", templates=templates, snrs=snrs,
                                per_class=per_class, preset="randomised", **maps_held_out)
    for name, classes, per_class, held in ((("randomised-synthetic-22", 22, 100, None),
                                            ("randomised-synthetic-512", 512, 20, MANY_CLASSES_HELD_OUT))
                                           if args.recipes else ()):
        names = [f"syn{i:03d}" for i in range(classes)]
        mixed[name] = simulated(data / name, f"{name}: fsc train's default data, randomised imaging",
                                templates=[f"synthetic:{classes}"], snrs=snrs, per_class=per_class,
                                val_classes=names[-held:] if held else None,
                                test_classes=names[-2 * held:-held] if held else None, preset="randomised")
    if args.shifted:
        folders["all-shifted"] = simulated(data / "all-shifted", "the maps with every imaging shift at once "
                                           "(all-shifted)", templates=[args.templates], snrs=snrs,
                                           per_class=args.per_class, preset="all-shifted", **maps_held_out)
    turned = {folders[route] for route in ROUTES} | {mixed[name] for name in TURNED_MIXED if name in mixed}
    distorted = {folders[route] for route in ROUTES} | ({mixed["randomised"]} if "randomised" in mixed else set())

    def variants(train: Path) -> list[dict]:
        """The settings a model trained on ``train`` is benched with: as it is, with rotation
        augmentation where ``--turns`` asks for it, with spectral distortion where ``--spectra`` does
        and with an added background where ``--background`` does."""
        return [{}, *([TURNS] if args.turns and train in turned else []),
                *([SPECTRA] if args.spectra and train in distorted else []),
                *([BACKGROUND] if args.background and train == mixed.get("randomised") else [])]

    for snr in snrs:
        for test in ROUTES:
            for train in ROUTES:
                print(f"SNR {snr:g}: trained on {train}, tested on {test}", flush=True)
                for params in [*variants(folders[train]), *([ROBUST_INPUTS] if args.robust_inputs else [])]:
                    bench(args.methods.split(","), folders[test], snr, store, args, seeds, log,
                          None if train == test else folders[train], params)
                if train in mixed and holds(mixed[train], snr):
                    bench(args.methods.split(","), folders[test], snr, store, args, seeds, log, mixed[train])
            for name in (name for name in mixed if name.startswith("randomised")):
                if holds(mixed[name], snr):
                    print(f"SNR {snr:g}: trained on {name}, tested on {test}", flush=True)
                    for params in variants(mixed[name]):
                        bench(args.methods.split(","), folders[test], snr, store, args, seeds, log, mixed[name],
                              params)
            bench(["xcorr"], folders[test], snr, store, args, seeds, log)
        if args.shifted:
            for train in [*(folders[route] for route in ROUTES), *mixed.values()]:
                if holds(train, snr):
                    print(f"SNR {snr:g}: trained on {train.name}, tested on all-shifted", flush=True)
                    for params in variants(train):
                        bench(args.methods.split(","), folders["all-shifted"], snr, store, args, seeds, log, train,
                              params)
            bench(["xcorr"], folders["all-shifted"], snr, store, args, seeds, log)
    if args.single_shifts and 0.5 in snrs:
        from fewshot_cryoet.datasets.presets import PRESETS

        for preset in [p for p in PRESETS if p not in ("default", "all-shifted", "randomised")]:
            folder = simulated(data / f"shift-{preset}", f"the maps with one imaging shift: {preset}",
                               templates=[args.templates], snrs=[0.5], per_class=args.per_class, preset=preset,
                               **maps_held_out)
            for name in (n for n in ("randomised", "randomised-synthetic-512") if n in mixed):
                print(f"SNR 0.5: trained on {name}, tested on shift-{preset}", flush=True)
                for params in variants(mixed[name]):
                    bench(args.methods.split(","), folder, 0.5, store, args, seeds, log, mixed[name], params)
            bench(["xcorr"], folder, 0.5, store, args, seeds, log)
    write(store, args)


def simulated(folder: Path, what: str, **settings) -> Path:
    """``folder``, simulated with ``settings`` (``api.simulate``, seed 0) unless an earlier run made
    it: the script resumes."""
    if not (folder / "manifest.json").exists():
        print(f"simulating {what}", flush=True)
        api.simulate(folder, seed=0, **settings)
    return folder


@functools.cache
def holds(folder: Path, snr: float) -> bool:
    """Whether the training set ``folder`` holds ``snr``; when not, says so (once: answers are
    cached, so each manifest is read once too): it was made by a run at other levels (a data set is
    simulated at the levels of the run that first makes it), and its rows at ``snr`` need a fresh
    ``--work``."""
    if snr_label(snr) in api.open_dataset(folder).snr_labels:
        return True
    print(f"{folder.name} holds no SNR {snr:g} (simulated at other levels): its rows at {snr:g} are "
          "skipped; a fresh --work simulates it anew", flush=True)
    return False


def bench(methods, test, snr, store, args, seeds, log, train=None, params=None) -> None:
    frame = api.bench(methods, dataset=test, snrs=[snr], ways=[6], episodes=args.episodes, budget=args.budget,
                      store=store, resume=True, seeds=seeds, train_dataset=train, crf=False, reporter=log,
                      params={method: params for method in methods} if params else None)
    if frame.attrs["failures"]:
        sys.exit("; ".join(frame.attrs["failures"]))


def describe(training: str) -> str:
    """A training set's name as the page says it: ``direct-fourier+synthetic-512`` → "direct-fourier,
    512 synthetic classes beside the maps'"; ``randomised-synthetic-512`` → fsc train's default."""
    if training.startswith("randomised-synthetic-"):
        count = training.rsplit("-", 1)[1]
        which = "fsc train's default data" if count == "512" else "fsc train's earlier default data"
        return f"randomised, {count} synthetic classes only ({which})"
    route, _, count = training.partition("+synthetic-")
    return f"{route}, {count} synthetic classes beside the maps'" if count else route


def complete(rows, args: argparse.Namespace) -> bool:
    """Whether ``rows`` (one row's cell) hold every test episode for every training seed."""
    counts = rows.groupby(rows["train_seed"].fillna(0))["episode"].nunique()  # as paired_rows.episode_means
    return len(counts) == len(args.seeds.split(",")) and bool((counts == args.episodes).all())


def write(store: Path, args: argparse.Namespace) -> None:
    from fewshot_cryoet.results.store import ResultsStore

    with ResultsStore(store, create=False) as results:
        frame = results.frame()
    table = []
    for stored in sorted(set(frame["snr"]), key=lambda text: -float(text)):  # every level the store holds
        level, snr = frame[frame["snr"] == stored], float(stored)  # the store keeps levels as labels ("inf")
        present = set(level["dataset"])
        for test in [name for name in (*ROUTES, "all-shifted") if name in present] + sorted(
                name for name in present if name.startswith("shift-")):
            tested = level[level["dataset"] == test]
            xcorr_rows = tested[tested["label"] == "xcorr"]  # scored after the learned rows: absent mid-run
            xcorr = episode_means(xcorr_rows)[0] if xcorr_rows["episode"].nunique() == args.episodes else None
            for label in sorted(set(tested["label"]) - {"xcorr"}):
                rows = tested[tested["label"] == label]
                own_rows = rows[rows["train_dataset"] == ""]  # none for all-shifted: nothing trains on it
                own = episode_means(own_rows)[0] if complete(own_rows, args) else None
                for source in sorted(set(rows["train_dataset"]), key=lambda name: (name.split("+")[0] not in ("", test),
                                                                                    name)):
                    if not complete(rows[rows["train_dataset"] == source], args):
                        continue  # a cell still running (or stopped): on the page once every seed is in
                    episodes, per_seed = episode_means(rows[rows["train_dataset"] == source])
                    described = describe(source or test)
                    table.append({"SNR": f"{snr:g}", "tested on": test, "row": f"{label}, trained on {described}",
                                  "accuracy": f"{episodes.mean():.3f}", "per seed": seed_range(per_seed),
                                  "against xcorr": "—" if xcorr is None else paired_text(episodes, xcorr),
                                  "against trained on the test route": "—" if source == "" or own is None else
                                  paired_text(episodes, own)})
            if xcorr is not None:
                table.append({"SNR": f"{snr:g}", "tested on": test, "row": "xcorr (no training)",
                              "accuracy": f"{xcorr.mean():.3f}", "per seed": "—", "against xcorr": "—",
                              "against trained on the test route": "—"})
    write_page(args.out, "Across simulators: trained on one imaging route, tested on another", "cross_route.py",
               f"Each method trained ({args.budget}, training seeds {args.seeds}) on the training classes of one "
               f"route and tested on the test classes of each ({args.per_class} subtomograms per class of "
               f"`{args.templates}`), 6-way 1-shot, {args.episodes} test episodes per test set, the same for every "
               "row of that set. Accuracy: the mean over training seeds (their range beside it); differences: "
               "paired over the same episodes (mean ± 95% CI, Wilcoxon p). The table holds every row of the store "
               "(`--work`), whichever command of the script's docstring wrote it.", table)

if __name__ == "__main__":
    main()
