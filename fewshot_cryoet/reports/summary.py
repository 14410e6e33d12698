"""One leaderboard row per configuration and setting: results rows grouped by domain,
configuration, SNR, N and K into accuracy mean ± CI and Dice, with labels that say what differs
between rows sharing a name, and a sentence on how each row was trained."""

from __future__ import annotations

import math

import pandas as pd

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.datasets.dataset import RECORDED
from fewshot_cryoet.evaluation.metrics import seeds_and_episodes_ci

LEADERBOARD_EPISODES = 600


def domain(train_dataset: str, dataset: str) -> str:
    """How a leaderboard names where rows come from: the data set, or "training → test" domains."""
    return f"{train_dataset} → {dataset}" if train_dataset else dataset


#: What makes two results rows the same leaderboard row: the configuration (method, variant,
#: hyper-parameter hash, budget, seed), the data (domain and hashes) and the setting.
ROW_KEYS = ["dataset", "dataset_hash", "train_dataset", "train_dataset_hash", "method", "variant", "params_hash",
            "label", "budget", "seed", "snr", "n_way", "k_shot", "q_query"]


#: The configuration part of a row's key, beside its label.
CONFIGURATION = ["method", "variant", "params_hash", "budget", "seed"]


#: The columns of cross-domain rows: "" for in-domain rows.
CROSS_DOMAIN = ("train_dataset", "train_dataset_hash")


def with_domain_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its cross-domain columns "" for in-domain rows (older stores lack them, and
    joins may give NaN), so rows compare and group alike wherever they come from."""
    return frame.assign(**{c: frame[c].fillna("") if c in frame else "" for c in CROSS_DOMAIN})


def with_training_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """Every row's training seed: its own, or the episode seed it was trained with (rows from
    stores before training seeds existed were all trained with it)."""
    seeds = frame["train_seed"] if "train_seed" in frame else pd.Series(math.nan, index=frame.index)
    return frame.assign(train_seed=seeds.fillna(frame["seed"]).astype(int))


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (domain, configuration, SNR, N, K): accuracy mean ± CI (over training seeds and
    episodes, see :func:`seeds_and_episodes_ci`), Dice mean ± std, n. Rows of different
    configurations never merge, even under one label: where a label covers several, the label
    says what differs (budget, seed or hyper-parameter hash). An episode index appears at most
    once per row and training seed; anything else is refused, since it would narrow the CI."""
    frame = distinct_labels(with_training_seeds(with_domain_columns(frame)))
    keys = ROW_KEYS
    rows = []
    for key, group in frame.groupby(keys, sort=False):
        repeated = group.duplicated(["train_seed", "episode"])
        if repeated.any():
            raise FscError(f"results row {dict(zip(keys, key))['label']!r} holds episode "
                           f"{int(group['episode'][repeated].iloc[0])} twice; the store is damaged")
        accuracy, ci, seeds = seeds_and_episodes_ci(group)
        dice = group["dice"].dropna()
        dice_crf = group["dice_crf"].dropna()
        rows.append({
            **dict(zip(keys, key)),
            "episodes": int(group["episode"].nunique()), "seeds": seeds, "accuracy": accuracy, "ci95": ci,
            "dice": float(dice.mean()) if len(dice) else math.nan,
            "dice_std": float(dice.std(ddof=1)) if len(dice) > 1 else math.nan,
            "dice_crf": float(dice_crf.mean()) if len(dice_crf) else math.nan,
            "dice_crf_std": float(dice_crf.std(ddof=1)) if len(dice_crf) > 1 else math.nan,
            "predict_ms": 1000 * float(group["predict_seconds"].mean()),
            "fit_seconds": float(group["fit_seconds"].dropna().mean()) if group["fit_seconds"].notna().any() else math.nan,
            "fit_episodes": float(group["fit_episodes"].dropna().mean()) if group["fit_episodes"].notna().any() else math.nan,
            "examples_seen": _examples_seen(group),
            "val_accuracy": float(group["val_accuracy"].dropna().mean()) if group["val_accuracy"].notna().any() else math.nan,
            "mask_snr": float(group["mask_snr"].iloc[0]) if "mask_snr" in group else math.nan,
            "device": group["device"].iloc[0], "package_version": group["package_version"].iloc[0],
            "plugin": group["plugin"].iloc[0],
        })
    return _in_budget_order(pd.DataFrame(rows))


def _in_budget_order(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows of several budgets ordered by increasing budget, otherwise in the store's order. The
    store keeps the order in which results were computed, and a budget curve trains (and so often
    scores) its largest budget first: without this a table would read 100ep, 1000ep, 300ep."""
    if summary.empty or summary.loc[summary["budget"] != "", "budget"].nunique() < 2:
        return summary
    from fewshot_cryoet.core.types import Budget

    def size(text: str) -> tuple[float, float]:
        if not text:
            return (0.0, 0.0)  # untrained methods first, as a floor
        budget = Budget.parse(text)
        return (math.inf if budget.episodes is None else budget.episodes,
                math.inf if budget.minutes is None else budget.minutes)

    order = sorted(range(len(summary)), key=lambda i: size(summary["budget"].iloc[i]))  # stable
    return summary.iloc[order].reset_index(drop=True)


def _examples_seen(group: pd.DataFrame) -> float:
    """Training volumes a row's model saw (supports and queries over every episode), where the
    store recorded it (stores from before it did leave it empty)."""
    if "fit_examples" not in group or not group["fit_examples"].notna().any():
        return math.nan
    return float(group["fit_examples"].dropna().mean())


def training_summary(part: pd.DataFrame) -> str:
    """What training each row got, in words: its budget and, per SNR, episodes, examples and time."""
    texts = []
    for label, rows in part.groupby("label", sort=False):
        budget = rows["budget"].iloc[0]
        if not budget:
            texts.append(f"{label}: none")
            continue
        fits = rows.drop_duplicates("snr").sort_values("snr", key=lambda c: c.map(snr_order))
        done = "; ".join(f"SNR {r['snr']}: {r['fit_episodes']:.0f} episodes, "
                         + ("" if math.isnan(r["examples_seen"]) else f"{r['examples_seen']:,.0f} examples, ")
                         + f"{r['fit_seconds']:.0f} s" for _, r in fits.iterrows() if not math.isnan(r["fit_episodes"]))
        seeds = int(rows["seeds"].max())
        texts.append(f"{label}: {budget}" + (f" × {seeds} training seeds (mean per seed)" if seeds > 1 else "")
                     + (f" ({done})" if done else ""))
    return "; ".join(texts)


def distinct_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Labels made unique per configuration: a label shared by configurations that differ gets
    what differs appended (`` · budget 2m``, `` · seed 1``, `` · params 1a2b3c``)."""
    if frame.empty:
        return frame
    frame = frame.copy()
    for label, part in frame.groupby("label", sort=False):
        configurations = part[CONFIGURATION].drop_duplicates()
        if len(configurations) < 2:
            continue
        differing = [c for c in ("budget", "seed", "params_hash", "variant", "method") if configurations[c].nunique() > 1]
        suffix = part[differing].astype(str).apply(
            lambda r: " · ".join(f"{'params' if c == 'params_hash' else c} {v or 'none'}" for c, v in r.items()), axis=1)
        frame.loc[part.index, "label"] = label + " · " + suffix
    return frame


def snr_order(text: str) -> float:
    """∞ first, then decreasing SNR; recorded (imported) data, whose SNR is unknown, last."""
    if text == RECORDED:
        return math.inf
    return -math.inf if text == "inf" else -float(text)


def column_label(row) -> str:
    """``SNR 0.02 (in-mask 0.16) · 8-way``: the nominal SNR is over the whole box, mostly solvent;
    the median SNR inside the particle masks says how hard the level really is."""
    shot = "" if row["k_shot"] == 1 else f" {row['k_shot']}-shot"
    if row["snr"] == RECORDED:  # imported from a microscope: no nominal SNR
        return f"recorded · {row['n_way']}-way{shot}"
    snr = "∞" if row["snr"] == "inf" else row["snr"]
    mask_snr = row.get("mask_snr", math.nan)
    if not (isinstance(mask_snr, float) and math.isfinite(mask_snr)):
        return f"SNR {snr} · {row['n_way']}-way{shot}"
    inside = f"{mask_snr:.2g}" if mask_snr < 100 else f"{mask_snr:.0f}"
    return f"SNR {snr} (in-mask {inside}) · {row['n_way']}-way{shot}"


def ordered_rows(summary: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Rows sorted by SNR (∞ first), K and N, and the table's column names in that order."""
    ordered = summary.assign(_snr=summary["snr"].map(snr_order)).sort_values(["_snr", "k_shot", "n_way"])
    return ordered, list(dict.fromkeys(column_label(r) for _, r in ordered.iterrows()))
