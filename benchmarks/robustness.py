"""Robustness to the imaging model: train on the default domain, test on shifted ones.

Every method is trained and selected once per SNR on the default imaging. The same checkpoint is
then tested at 6-way 1-shot on the test classes of the default domain and of each shifted domain
(`fewshot_cryoet.datasets.presets`: one setting changed at a time, plus all together). The table
shows in-domain accuracy, each shifted accuracy and its drop, and Dice for segmenting methods.

Run (resumable: data sets are simulated once, results go to a store and --resume continues):

    python benchmarks/robustness.py --templates ../shared/data/templates --work robustness-work \
        --out leaderboards/robustness

The page and CSV under ``--out`` are generated; do not edit them by hand.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from fewshot_cryoet import api
from fewshot_cryoet.datasets.presets import PRESETS
from fewshot_cryoet.leaderboard import LEADERBOARD_EPISODES, summarise
from fewshot_cryoet.outputs import write_text
from fewshot_cryoet.reporting import CallbackReporter

SHIFTED = ("near-focus", "strong-envelope", "amplitude-contrast", "low-resolution", "narrow-tilts",
           "structured-background", "all-shifted")
METHODS = ("protonet", "siamese", "cosnet/duse-decoder", "xcorr")


def simulate_domains(templates: list[str], work: Path, per_class: int, snrs: list[float]) -> dict[str, Path]:
    folders = {}
    for name in ("default", *SHIFTED):
        folder = work / "data" / name
        if not (folder / "manifest.json").exists():
            print(f"simulating {name}: {PRESETS[name].description}", flush=True)
            api.simulate(folder, templates=templates, snrs=snrs, per_class=per_class, preset=name, seed=0)
        folders[name] = folder
    return folders


def run(folders: dict[str, Path], store: Path, snrs: list[float], episodes: int, budget: str) -> None:
    log = CallbackReporter(on_progress=None, on_log=lambda line: print(line, flush=True))
    for snr in snrs:
        for name, folder in folders.items():
            print(f"SNR {snr}: testing on {name}", flush=True)
            frame = api.bench(list(METHODS), dataset=folder, snrs=[snr], ways=[6], episodes=episodes, budget=budget,
                              store=store, resume=True, train_dataset=None if name == "default" else folders["default"],
                              reporter=log)
            if frame.attrs["failures"]:
                raise SystemExit("; ".join(frame.attrs["failures"]))


def table(store: Path) -> tuple[pd.DataFrame, str]:
    from fewshot_cryoet.store import ResultsStore

    results = ResultsStore(store)
    frame = results.frame()
    results.close()
    summary = summarise(frame)
    rows, lines = [], []
    for (label, snr), part in summary.groupby(["label", "snr"], sort=False):
        home = part[part["train_dataset"] == ""]
        if home.empty:
            continue
        base = float(home["accuracy"].iloc[0])
        row = {"method": label, "snr": snr, "default": base, "default_ci": float(home["ci95"].iloc[0]),
               "default_dice": float(home["dice"].iloc[0])}
        for name in SHIFTED:
            shifted = part[(part["dataset"] == name) & (part["train_dataset"] == "default")]
            if shifted.empty:
                continue
            row[name] = float(shifted["accuracy"].iloc[0])
            row[f"{name}_ci"] = float(shifted["ci95"].iloc[0])
            row[f"{name}_dice"] = float(shifted["dice"].iloc[0])
        rows.append(row)
    data = pd.DataFrame(rows)
    episodes = frame.groupby(["label", "snr", "dataset"])["episode"].nunique()
    quick = episodes.min() < LEADERBOARD_EPISODES if len(episodes) else True
    for snr in sorted(data["snr"].unique(), key=lambda t: -math.inf if t == "inf" else -float(t)):
        part = data[data["snr"] == snr]
        header = ["method", "default (in-domain)", *SHIFTED]
        lines += [f"### SNR {'∞' if snr == 'inf' else snr}, 6-way 1-shot: accuracy ± 95% CI (drop from in-domain)",
                  "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in part.iterrows():
            cells = [r["method"], f"{r['default']:.3f} ± {r['default_ci']:.3f}"]
            for name in SHIFTED:
                value = r.get(name)
                cells.append("—" if value is None or pd.isna(value) else
                             f"{value:.3f} ± {r[f'{name}_ci']:.3f} ({value - r['default']:+.3f})")
            lines.append("| " + " | ".join(cells) + " |")
        dice = part[part["default_dice"].notna()]
        if not dice.empty:
            lines += ["", f"Raw Dice (probability > 0.5), SNR {'∞' if snr == 'inf' else snr}:", "",
                      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for _, r in dice.iterrows():
                lines.append("| " + " | ".join([r["method"], f"{r['default_dice']:.3f}"] + [
                    "—" if pd.isna(r.get(f"{name}_dice")) else f"{r[f'{name}_dice']:.3f}" for name in SHIFTED]) + " |")
        lines.append("")
    note = (f"Test episodes per cell: {episodes.min()}–{episodes.max()}"
            + (f" — **fewer than {LEADERBOARD_EPISODES}: not leaderboard grade**" if quick else "") + ".")
    trained = frame[frame["train_dataset"] == ""].dropna(subset=["fit_episodes"]).groupby(["label", "snr"])
    fits = "; ".join(f"{label} at SNR {snr}: {int(part['fit_episodes'].iloc[0])} episodes in "
                     f"{part['fit_seconds'].iloc[0]:.0f} s" for (label, snr), part in trained)
    return data, "\n".join([note, "", f"Training (the same checkpoint serves every column): {fits}.", "", *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", default=None, help="Template maps [built-in synthetic classes].")
    parser.add_argument("--work", type=Path, default=Path("robustness-work"), help="Data sets and the store.")
    parser.add_argument("--out", type=Path, default=Path("leaderboards/robustness"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--budget", default="2m", help="Training budget per method and SNR.")
    parser.add_argument("--snr", action="append", default=None, help="SNR levels [inf and 0.5].")
    parser.add_argument("--render-only", action="store_true", help="Only redraw the page from the store.")
    args = parser.parse_args()
    snrs = [float(s) for s in (args.snr or ["inf", "0.5"])]
    templates = [args.templates] if args.templates else []
    store = args.work / "robustness.sqlite"
    if not args.render_only:
        folders = simulate_domains(templates, args.work, args.per_class, snrs)
        run(folders, store, snrs, args.episodes, args.budget)
    data, body = table(store)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "robustness.csv", data.to_csv(index=False))
    domains = "\n".join(f"- `{name}`: {PRESETS[name].description}" for name in ("default", *SHIFTED))
    write_text(args.out / "README.md", "\n".join([
        "# Robustness to the imaging model", "",
        "Generated by `benchmarks/robustness.py`; do not edit by hand. Each method is trained and selected "
        f"once per SNR on the `default` domain ({args.budget} budget, {args.per_class} subtomograms per class, "
        "templates: " + (f"`{args.templates}`" if args.templates else "built-in synthetic classes") + "), "
        "then tested on the test classes of every domain. The checkpoint is the same for every column. "
        "Classes are split alike in every domain, so no test class is ever trained or selected on. "
        "`structured-background` changes only the noise, so at SNR ∞ it equals `default` by construction.", "",
        "Domains:", "", domains, "", body]) + "\n")
    print(f"wrote {args.out / 'README.md'}")


if __name__ == "__main__":
    main()
