"""Per-class results from query predictions: recall, precision and F1 per test class,
confusion counts (scikit-learn), and the expected calibration error of each row's confidences."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fewshot_cryoet.reports.summary import distinct_labels, domain, with_domain_columns


def per_class_results(predictions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-class precision, recall and F1 with query counts; confusion counts in long form) per
    row, domain, SNR and N-way, from every stored query's true and predicted class (scikit-learn's
    ``precision_recall_fscore_support`` and ``confusion_matrix``). Recall is the accuracy on that
    class's queries."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if predictions.empty:
        return pd.DataFrame(), pd.DataFrame()
    predictions = distinct_labels(with_domain_columns(predictions))
    scores, counts = [], []
    for (label, train, dataset, snr, ways), part in predictions.groupby(
            ["label", "train_dataset", "dataset", "snr", "n_way"], sort=False):
        classes = sorted(set(part["truth"]) | set(part["predicted"]))
        precision, recall, f1, support = precision_recall_fscore_support(
            part["truth"], part["predicted"], labels=classes, zero_division=0)
        where = domain(train, dataset)
        scores += [{"label": label, "domain": where, "snr": snr, "n_way": ways, "class": c, "precision": p,
                    "recall": r, "f1": f, "queries": int(n)} for c, p, r, f, n in zip(classes, precision, recall, f1, support)]
        matrix = confusion_matrix(part["truth"], part["predicted"], labels=classes)
        counts += [{"label": label, "domain": where, "snr": snr, "n_way": ways, "truth": t, "predicted": p,
                    "count": int(matrix[i, j])} for i, t in enumerate(classes) for j, p in enumerate(classes)]
    return pd.DataFrame(scores), pd.DataFrame(counts)


#: Confidence bins of the expected calibration error.
CALIBRATION_BINS = 15


def calibration(predictions: pd.DataFrame) -> pd.DataFrame:
    """Expected calibration error per row, domain, SNR and N-way: the query-weighted mean gap
    between confidence (the predicted class's probability) and accuracy in 15 equal-width
    confidence bins, with the mean confidence and accuracy beside it. Users threshold on
    confidence, so a row whose confidence says 0.9 should be right 9 times in 10."""
    known = predictions.dropna(subset=["confidence"]) if "confidence" in predictions else predictions.iloc[:0]
    if known.empty:
        return pd.DataFrame()
    known = distinct_labels(with_domain_columns(known))
    rows = []
    for (label, train, dataset, snr, ways), part in known.groupby(["label", "train_dataset", "dataset", "snr", "n_way"],
                                                                  sort=False):
        confidence = part["confidence"].to_numpy()
        correct = (part["truth"] == part["predicted"]).to_numpy(dtype=float)
        bins = np.minimum((confidence * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
        gap = sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * (bins == b).sum()
                  for b in np.unique(bins)) / len(part)
        rows.append({"label": label, "domain": domain(train, dataset), "snr": snr, "n_way": ways,
                     "queries": len(part), "mean_confidence": float(confidence.mean()),
                     "accuracy": float(correct.mean()), "ece": float(gap)})
    return pd.DataFrame(rows)
