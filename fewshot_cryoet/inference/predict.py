"""``fsc predict``: classify and segment a user's subtomograms against a few picked examples.

Inputs are the files cryo-ET users have: MRC subtomograms listed by folder, CSV or RELION STAR.
Every listed file is checked before any work starts (all missing files are reported at once).
Each volume is read with its header's voxel size, resampled to the model's voxel size, padded or
cropped around its centre to the model's box, and normalised as in training. Queries stream in
batches against the fixed support set (whose embeddings the method caches), so memory stays
bounded for any number of queries. A query that cannot be read or scored is skipped and listed with
its reason in ``skipped.csv`` (``on_error="skip"``, the default) or stops the run (``"stop"``), so
one bad file never throws away the predictions already made.

Outputs, written into a hidden folder that is renamed into place at the end (an interrupted run
never leaves a truncated table): ``predictions.csv`` and ``predictions.star`` (the input columns,
the predicted class, a score and a probability per class, and the confidence = the predicted
class's probability), one CRF-refined segmentation MRC per query mapped back onto the query's own
grid (plus the raw probability map with ``save_probabilities``), and ``summary.png``.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.core.reporting import Reporter, as_reporter
from fewshot_cryoet.datasets.mrc_io import write_volume
from fewshot_cryoet.datasets.user_files import (
    PATH_COLUMNS,
    Geometry,
    Preparer,
    SupportSet,
    _box_text,
    _column,
    _mrc_files,
    _read_table,
    _resolve,
    fit_box,
)
from fewshot_cryoet.evaluation.calibration import class_probabilities
from fewshot_cryoet.evaluation.scoring import Scorer

SUMMARY_EXAMPLES = 4



def duplicate_queries(paths: list[Path]) -> int:
    """How many query entries repeat an earlier one (they are predicted again; worth a warning)."""
    return len(paths) - len({Path(os.path.abspath(p)) for p in paths})


def read_queries(sources: list[Path]) -> tuple[pd.DataFrame, list[Path]]:
    """(table whose columns are carried to the output, query paths): MRC files, folders of them,
    or one CSV/STAR table (RELION's ``rlnImageName`` column for paths)."""
    tables, paths = [], []
    for source in map(Path, sources):
        if source.is_dir():
            files = _mrc_files(source)
            if not files:
                raise FscError(f"{source}: folder holds no MRC files")
            tables.append(pd.DataFrame({"rlnImageName": [str(f) for f in files]}))
            paths += files
        elif source.suffix.lower() in (".csv", ".star"):
            if not source.exists():
                raise FscError(f"{source}: query table not found")
            table = _read_table(source)
            column = _column(table, PATH_COLUMNS, source, "path")
            tables.append(table)
            paths += [_resolve(source.parent, v, source, i) for i, v in enumerate(table[column])]
        else:
            tables.append(pd.DataFrame({"rlnImageName": [str(source)]}))
            paths.append(source)
    if not paths:
        raise FscError("no queries given")
    return pd.concat(tables, ignore_index=True), paths


def _file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file, or None."""
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            return "is a folder"
    except FileNotFoundError:
        return "not found"
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a loop of symbolic links"
        return exc.strerror or type(exc).__name__
    return None


def check_files_exist(paths: list[Path]) -> None:
    """Every unreadable file at once (missing, a folder, a symbolic-link loop), before any work."""
    problems = [(str(p), why) for p in dict.fromkeys(paths) if (why := _file_problem(p))]
    if problems:
        shown = ", ".join(f"{p} ({why})" for p, why in problems[:20])
        more = f" and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise FscError(f"{len(problems)} listed file(s) cannot be read: {shown}{more}")


def _zoom_back(volume: np.ndarray, factor: list[float], order: int) -> np.ndarray:
    """Per-axis zoom for mapping model-grid outputs back (order 0 keeps masks binary)."""
    from scipy.ndimage import zoom

    return zoom(volume, factor, order=order, mode="nearest", grid_mode=True).astype(np.float32)


def to_file_grid(mask: np.ndarray, geometry: Geometry, order: int = 0) -> np.ndarray:
    """Map a model-grid volume back onto the query file's own grid (undo pad/crop and resampling)."""
    out = fit_box(mask.astype(np.float32), geometry.resampled_shape)
    if geometry.resampled_shape != geometry.shape:
        factor = [s / r for s, r in zip(geometry.shape, geometry.resampled_shape)]
        out = fit_box(_zoom_back(out, factor, order), geometry.shape)
    return out


# -- prediction --------------------------------------------------------------------------------------
#: Output columns; input columns of the same name are renamed ``input_<name>``.
OUTPUT_COLUMNS = ("predicted_class", "confidence", "segmentation", "foreground_voxels")
ON_ERROR = ("skip", "stop")


@dataclass
class PredictOptions:
    batch_size: int = 32
    save_probabilities: bool = False
    crf: bool = True
    #: ``skip``: a query that cannot be read or scored is listed in ``skipped.csv`` with the reason
    #: and the rest are predicted; ``stop``: the first such query stops the run (nothing written).
    on_error: str = "skip"


@dataclass
class PredictSummary:
    out: Path
    predicted: int
    skipped: list[tuple[int, Path, str]]  # (row, file, reason)


def predict_folder(method, support: SupportSet, queries: pd.DataFrame, query_paths: list[Path],
                   prepare: Preparer, out: Path, options: PredictOptions, reporter: Reporter | None = None,
                   overwrite: bool = False) -> PredictSummary:
    """Run the whole prediction into ``out`` (atomically; only a predictions folder we wrote is
    ever replaced)."""
    from fewshot_cryoet.core.outputs import AtomicFolder

    if options.on_error not in ON_ERROR:
        raise SettingError("on_error", f"on_error {options.on_error!r}: use one of {', '.join(ON_ERROR)}")
    class_names = support.class_names
    prepared_support = [prepare(p) for p in support.paths]
    support_boxes = {g.shape: p for p, (_, g) in zip(support.paths, prepared_support)}
    if len(support_boxes) > 1:
        (a, pa), (b, pb) = list(support_boxes.items())[:2]
        raise FscError(f"{pb}: box {_box_text(b)} differs from {pa.name}'s {_box_text(a)}; "
                       "extract all support examples with one box size")
    support_box, first_support = next(iter(support_boxes.items()))
    prepared = PreparedSupport(
        class_names, torch.from_numpy(np.stack([v for v, _ in prepared_support]))[:, None],
        torch.tensor([class_names.index(c) for c in support.classes]),
        tuple(("support", i) for i in range(len(support.paths))), support_box, first_support,
    )
    with AtomicFolder(Path(out), "predictions", overwrite) as folder:
        skipped = _predict_into(folder.tmp, method, prepared, queries, query_paths, prepare, options,
                                as_reporter(reporter))
        folder.commit()
    return PredictSummary(Path(out), len(query_paths) - len(skipped), skipped)


@dataclass
class PreparedSupport:
    class_names: list[str]
    volumes: torch.Tensor
    labels: torch.Tensor
    ids: tuple  # stable identities: the method caches support embeddings across query batches
    box: tuple[int, int, int]  # the support files' own box
    first_path: Path


def _predict_into(tmp: Path, method, support: PreparedSupport, queries: pd.DataFrame, query_paths: list[Path],
                  prepare: Preparer, options: PredictOptions, reporter: Reporter) -> list[tuple[int, Path, str]]:
    """Predict every query into ``tmp``; returns the skipped queries (row, file, reason)."""
    from fewshot_cryoet.episodes import Episode

    class_names = support.class_names
    segments = bool(getattr(method, "segments", False))
    if segments:  # a method that does not segment leaves no empty folder behind
        (tmp / "segmentations").mkdir(parents=True)
        if options.save_probabilities:
            (tmp / "probabilities").mkdir()
    scorer = Scorer(method.crf_params() if options.crf else None, reporter.log)
    rows: dict[int, dict] = {}
    skipped: list[tuple[int, Path, str]] = []
    examples: dict[str, list] = {c: [] for c in class_names}
    task = reporter.task("predict", total=len(query_paths))

    first_error: list[FscError] = []

    def bad(index: int, path: Path, reason: str | FscError) -> None:
        error = reason if isinstance(reason, FscError) else FscError(reason)
        if options.on_error == "stop":
            raise error
        first_error[:] = first_error or [error]
        skipped.append((index, path, str(error)))

    for start in range(0, len(query_paths), options.batch_size):
        batch = []  # (row index, path, volume, geometry) of the readable queries in this batch
        for index in range(start, min(start + options.batch_size, len(query_paths))):
            path = query_paths[index]
            try:
                volume, geometry = prepare(path)
            except FscError as exc:
                bad(index, path, exc)
                continue
            if geometry.shape != support.box:
                bad(index, path, f"{path}: box {_box_text(geometry.shape)} differs from the support's "
                                 f"{_box_text(support.box)} ({support.first_path.name}); extract support and "
                                 "queries with the same box")
                continue
            batch.append((index, path, volume, geometry))
        if batch:
            volumes = torch.from_numpy(np.stack([b[2] for b in batch]))[:, None]
            episode = Episode(support.volumes, support.labels, volumes, torch.zeros(len(volumes), dtype=torch.long),
                              tuple(class_names), prepare.voxel_size, math.nan, support_ids=support.ids)
            prediction = method.predict(episode)
            scores = prediction.scores.float()
            finite = torch.isfinite(scores).all(dim=1)
            probabilities = class_probabilities(torch.nan_to_num(scores), method.temperature)
        for i, (index, path, volume, geometry) in enumerate(batch):
            if not finite[i]:
                bad(index, path, f"{path}: {method.name} returned NaN or infinite scores for this query")
                continue
            predicted = int(probabilities[i].argmax())
            row = {"predicted_class": class_names[predicted], "confidence": float(probabilities[i, predicted])}
            row.update({f"score_{c}": float(scores[i, j]) for j, c in enumerate(class_names)})
            row.update({f"probability_{c}": float(probabilities[i, j]) for j, c in enumerate(class_names)})
            mask = None
            if segments and prediction.probabilities is not None:
                raw = prediction.probabilities[i, 0].float().numpy()
                name = f"{index:06d}_{path.stem}.mrc"
                mask = scorer.mask(raw, volume)
                write_volume(tmp / "segmentations" / name, to_file_grid(mask, geometry), geometry.voxel_size)
                if options.save_probabilities:
                    write_volume(tmp / "probabilities" / name, to_file_grid(raw, geometry, order=1), geometry.voxel_size)
                row["segmentation"] = f"segmentations/{name}"
                row["foreground_voxels"] = int(mask.sum())
            rows[index] = row
            chosen = examples[class_names[predicted]]
            if len(chosen) < SUMMARY_EXAMPLES:
                chosen.append((path.name, volume[volume.shape[0] // 2].copy(),
                               None if mask is None else mask[mask.shape[0] // 2].copy(), row["confidence"]))
        task.advance(min(options.batch_size, len(query_paths) - start))
    if not rows:
        text = f"no query could be predicted ({len(skipped)} skipped); the first: {skipped[0][2]}"
        first = first_error[0]
        raise SettingError(first.setting, text) if isinstance(first, SettingError) else FscError(text)
    inputs = queries.reset_index(drop=True)
    ours = set(OUTPUT_COLUMNS) | {c for row in rows.values() for c in row}
    inputs = inputs.rename(columns={c: f"input_{c}" for c in inputs.columns if c in ours})
    done = sorted(rows)
    table = pd.concat([inputs.iloc[done].reset_index(drop=True), pd.DataFrame([rows[i] for i in done])], axis=1)
    _write_tables(table, tmp)
    if skipped:
        failed = inputs.iloc[[i for i, _, _ in skipped]].reset_index(drop=True)
        failed["reason"] = [reason for _, _, reason in skipped]
        failed.to_csv(tmp / "skipped.csv", index=False)
    draw_summary(examples, tmp / "summary.png", segments)
    return skipped


def _write_tables(table: pd.DataFrame, folder: Path) -> None:
    import starfile

    table.to_csv(folder / "predictions.csv", index=False)
    star = table.rename(columns=dict(zip(table.columns, star_labels(table.columns))))
    starfile.write({"particles": star}, folder / "predictions.star", overwrite=True)


def star_labels(columns) -> list[str]:
    """Valid, unique STAR labels for table columns: RELION's own (``rln...``) kept, others become
    ``fsc<CamelCase>`` with every character outside letters, digits and ``_`` replaced (class
    names such as ``big ribosome`` go into ``score_<class>`` columns)."""
    labels: list[str] = []
    for column in columns:
        text = str(column)
        label = text if text.startswith("rln") else f"fsc{_camel(text)}"
        label = re.sub(r"[^A-Za-z0-9_]", "_", label)
        unique, n = label, 2
        while unique in labels:
            unique, n = f"{label}_{n}", n + 1
        labels.append(unique)
    return labels


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in str(name).replace("-", "_").split("_"))


def _short(name: str, limit: int = 22) -> str:
    """A file name shortened in the middle, so both its start and its distinguishing end show."""
    return name if len(name) <= limit else f"{name[: limit // 2 - 1]}…{name[-(limit // 2):]}"


def draw_summary(examples: dict[str, list], out: Path, segments: bool = True) -> Path:
    """A montage: one row per predicted class, its first examples (central XY slice; the mask
    outline only for a method that segments), each titled with its file and confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fewshot_cryoet.datasets.montage import save_figure

    classes = list(examples)
    columns = max(1, max((len(v) for v in examples.values()), default=1))
    fig, axes = plt.subplots(len(classes), columns, figsize=(1.8 * columns, 1.9 * len(classes)), squeeze=False)
    for r, class_name in enumerate(classes):
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(examples[class_name]):
                ax.axis("off")
                continue
            name, slice_, mask, confidence = examples[class_name][c]
            ax.imshow(slice_, cmap="gray")
            if mask is not None and mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors="tab:orange", linewidths=0.8)
            ax.set_title(f"{_short(name)}\nconfidence {confidence:.2f}", fontsize=6)
        axes[r, 0].set_ylabel(f"predicted {class_name}\n({len(examples[class_name])} shown)", fontsize=7)
    fig.suptitle("fsc predict: examples per predicted class, central XY slice"
                 + (" (mask outline in orange)" if segments else ""), fontsize=8)
    return save_figure(fig, out)
