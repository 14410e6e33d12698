"""fsc train + fsc predict as a user runs them, on classes the model never saw in training.

Run:  python benchmarks/predict_end_to_end.py --templates ../shared/data/templates --snr 1000 \
          --budget 3m --work /tmp/e2e [--out benchmarks/results/predict_end_to_end.md]

Steps: simulate (or reuse from the cache) the templates data set; ``fsc train`` COS-Net
(DuSE-SCNN w decoder, cpu profile) on its training classes; ``fsc export`` the particles as MRC
files + RELION STAR; pick the first particle of every *test* class as the support (a CSV), write
the other test particles as a STAR file of queries, run ``fsc predict``, and score its
predictions.csv and CRF-refined segmentation MRCs against the exported truth (class column and
mask files). Also runs xcorr (training-free) on the same support and queries.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
import torch
from click.testing import CliRunner

from fewshot_cryoet import api
from fewshot_cryoet.cli import main
from fewshot_cryoet.datasets.dataset import parse_snr
from fewshot_cryoet.datasets.mrc_io import read_volume
from fewshot_cryoet.evaluation.metrics import dice


def fsc(*args) -> float:
    start = time.perf_counter()
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"fsc {' '.join(map(str, args))} failed:\n{result.output}")
    return time.perf_counter() - start


def score(results: Path, queries: pd.DataFrame, export: Path) -> dict:
    predictions = pd.read_csv(results / "predictions.csv")
    accuracy = float((predictions["predicted_class"] == queries["fscClass"]).mean())
    out = {"queries": len(predictions), "accuracy": accuracy}
    if "segmentation" in predictions.columns:
        dices = []
        for seg, truth in zip(predictions["segmentation"], queries["fscMaskName"]):
            p = torch.from_numpy(read_volume(results / seg)[0] > 0.5)
            t = torch.from_numpy(read_volume(export / truth)[0] > 0.5)
            dices.append(float(dice(p[None], t[None])[0]))
        per_class = pd.Series(dices).groupby(queries["fscClass"].to_numpy()).mean()
        out.update(dice=float(np.mean(dices)), dice_std=float(np.std(dices)), dice_per_class=per_class.to_dict())
    return out


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", type=Path, required=True)
    parser.add_argument("--snr", default="1000")
    parser.add_argument("--budget", default="3m")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "predict_end_to_end.md")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    dataset = api.data_source(templates=[args.templates], per_class=100).at(parse_snr(args.snr))
    model = work / "model"
    if not (model / "model.json").exists():
        fsc("train", "--method", "cosnet/duse-decoder", "--dataset", dataset.path, "--snr", args.snr,
                            "--budget", args.budget, "--out", model)
    card = json.loads((model / "model.json").read_text())
    export = work / "export"
    if not (export / "particles.star").exists():
        fsc("export", dataset.path, "--out", export, "--snr", args.snr)
    table = starfile.read(export / "particles.star")
    test = table[table["fscClass"].isin(dataset.splits["test"])].reset_index(drop=True)
    first = test.groupby("fscClass").head(1)
    support = work / "support.csv"
    pd.DataFrame({"path": [str(export / p) for p in first["rlnImageName"]], "class": first["fscClass"]}).to_csv(
        support, index=False)
    queries = test.drop(index=first.index).reset_index(drop=True)
    queries_star = work / "queries.star"
    starfile.write({"particles": queries.assign(rlnImageName=[str(export / p) for p in queries["rlnImageName"]])},
                   queries_star, overwrite=True)
    rows = []
    for name, folder, options in (
        (f"COS-Net DuSE-SCNN w decoder (cpu), fsc train {args.budget}", "results-cosnet", ["--model", model]),
        ("xcorr (no training)", "results-xcorr", ["--method", "xcorr"]),
    ):
        results = work / folder
        seconds = fsc("predict", *options, "--support", support, "--queries", queries_star, "--out", results,
                      "--overwrite")
        rows.append((name, seconds, score(results, queries, export)))
    lines = [
        "# fsc train + fsc predict on unseen classes",
        "",
        f"- data: {dataset.path.name} ({len(dataset.classes)} shared templates, SNR {args.snr}); "
        f"test classes (never trained on): {', '.join(dataset.splits['test'])}",
        f"- support: the first particle of each test class ({len(first)} files, CSV); queries: the other "
        f"{len(queries)} test particles (STAR)",
        f"- training (fsc train, budget {args.budget}): {card['fit']['episodes']} episodes in {card['fit']['seconds']:.0f} s, "
        f"validation accuracy {card['fit']['best_validation_accuracy']}, "
        f"validation Dice {card['fit']['best_validation_dice']:.3f}",
        f"- date: {time.strftime('%Y-%m-%d')}",
        "",
        "| method | queries | accuracy | Dice (CRF-refined masks vs truth) | predict wall time (s) |",
        "|---|---|---|---|---|",
    ]
    for name, seconds, result in rows:
        dice = f"{result['dice']:.3f} ± {result['dice_std']:.3f}" if "dice" in result else "—"
        lines.append(f"| {name} | {result['queries']} | {result['accuracy']:.3f} | {dice} | {seconds:.1f} |")
    for name, _, result in rows:
        if "dice_per_class" in result:
            lines += ["", f"Dice per class ({name}): " + ", ".join(
                f"{c} {d:.3f}" for c, d in sorted(result["dice_per_class"].items()))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main_()
