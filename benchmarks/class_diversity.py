"""Does training on more classes make a learned method transfer? protonet trained on N embedded
synthetic macromolecules (N = 8, 32, 128, 512; cheap and unlimited), then tested on the test
classes of the shared density maps, which it never saw in any form: the cross-domain test of
class diversity. Template matching (xcorr, no training) and protonet trained on the maps' own
training classes are scored on the same test episodes, so every difference is paired.

A last row trains on both sources in one data set (``--templates synthetic:512 maps/``, the
maps' test classes held out): class diversity added to, not instead of, the real classes.

Run:  python benchmarks/class_diversity.py --test ../shared/data/templates
It resumes where it stopped (data sets and one store in ``--work``) and writes ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paired_rows import episode_means, paired_text, seed_range, write_page

from fewshot_cryoet import api
from fewshot_cryoet.core.reporting import CallbackReporter


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", default="../shared/data/templates", help="Maps whose test classes are the test.")
    parser.add_argument("--work", type=Path, default=Path("diversity-work"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/class_diversity.md"),
                        help="Markdown output (commit it dated)")
    parser.add_argument("--classes", default="8,32,128,512", help="Training class counts, comma-separated.")
    parser.add_argument("--per-class", type=int, default=20, help="Subtomograms per training class.")
    parser.add_argument("--mixed", type=int, default=512,
                        help="Also train on this many synthetic classes mixed with the maps' own training "
                             "classes in one data set (--templates synthetic:N maps/); 0: skip.")
    parser.add_argument("--test-per-class", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--budget", default="300ep")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--snr", type=float, default=0.5)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    counts = [int(c) for c in args.classes.split(",")]
    log = CallbackReporter(on_progress=None, on_log=lambda line: print(line, flush=True))
    test = args.work / "data" / "maps"
    if not (test / "manifest.json").exists():
        api.simulate(test, templates=[args.test], snrs=[args.snr], per_class=args.test_per_class, seed=0)
    store = args.work / "diversity.sqlite"
    for count in counts:
        folder = args.work / "data" / f"synthetic-{count}"
        if not (folder / "manifest.json").exists():  # every class trains, but two that select and two spare
            names = [f"syn{i:03d}" for i in range(count + 4)]
            print(f"simulating {count} + 4 synthetic classes", flush=True)
            api.simulate(folder, templates=[f"synthetic:{count + 4}"], snrs=[args.snr], per_class=args.per_class,
                         seed=0, val_classes=names[count:count + 2], test_classes=names[count + 2:])
        print(f"protonet trained on {count} synthetic classes", flush=True)
        bench(["protonet"], test, store, args, seeds, log, train=folder)
    if args.mixed:  # one training set of both sources, the maps' test classes held out as its test split
        folder = args.work / "data" / f"mixed-{args.mixed}"
        if not (folder / "manifest.json").exists():
            splits = api.open_dataset(test).splits
            print(f"simulating {args.mixed} synthetic classes and the maps' training classes", flush=True)
            api.simulate(folder, templates=[f"synthetic:{args.mixed}", args.test], snrs=[args.snr],
                         per_class=args.per_class, seed=0, val_classes=splits["val"], test_classes=splits["test"])
        print(f"protonet trained on {args.mixed} synthetic classes and the maps' training classes", flush=True)
        bench(["protonet"], test, store, args, seeds, log, train=folder)
    print("references: protonet on the maps' own training classes, and xcorr", flush=True)
    bench(["protonet", "xcorr"], test, store, args, seeds, log)
    write(store, counts, args)


def bench(methods, test, store, args, seeds, log, train=None) -> None:
    frame = api.bench(methods, dataset=test, snrs=[args.snr], ways=[6], episodes=args.episodes, budget=args.budget,
                      store=store, resume=True, seeds=seeds, train_dataset=train, reporter=log)
    if frame.attrs["failures"]:
        sys.exit("; ".join(frame.attrs["failures"]))


def write(store: Path, counts: list[int], args: argparse.Namespace) -> None:
    from fewshot_cryoet.results.store import ResultsStore

    with ResultsStore(store, create=False) as results:
        frame = results.frame()
    rows = {}
    for (train, label), part in frame.groupby(["train_dataset", "label"], sort=False):
        name = (f"{label}, {train.removeprefix('mixed-')} synthetic classes and the maps' training classes"
                if train.startswith("mixed-") else
                f"{label}, {train.removeprefix('synthetic-')} synthetic classes" if train else
                "xcorr (no training)" if label == "xcorr" else f"{label}, the maps' own training classes")
        rows[name] = episode_means(part)
    xcorr = rows["xcorr (no training)"][0]
    own = next(v[0] for k, v in rows.items() if k.endswith("own training classes"))
    table = []
    for name, (episodes, per_seed) in rows.items():
        entry = {"row": name, "accuracy": f"{episodes.mean():.3f}", "per seed": seed_range(per_seed)}
        for other, against in (("against xcorr", xcorr), ("against the maps' own", own)):
            entry[other] = "—" if against is episodes else paired_text(episodes, against)
        table.append(entry)
    write_page(args.out, "Class diversity: accuracy on unseen density maps against the number of training classes",
               "class_diversity.py",
               f"protonet trained ({args.budget}, training seeds {args.seeds}) on N embedded synthetic classes "
               f"({args.per_class} subtomograms each, two more classes to select on), tested on the test classes "
               f"of `{args.test}` ({args.test_per_class} per class), SNR {args.snr:g}, default imaging, 6-way "
               f"1-shot, {args.episodes} test episodes, the same for every row. Accuracy: the mean over training "
               "seeds (their range beside it); differences: paired over the same episodes (mean ± 95% CI, "
               "Wilcoxon p).", table)

if __name__ == "__main__":
    main()
