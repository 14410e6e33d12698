"""Reading a results store: leaderboard pages, the progress of a grid that workers fill, and
one method against another on shared episodes. Reading never creates a store."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.core.reporting import Reporter, as_reporter
from fewshot_cryoet.results.location import DEFAULT_STORE

if TYPE_CHECKING:

    pass


def leaderboard(store: str | Path = DEFAULT_STORE, out: str | Path | None = None,
                reporter: Reporter | None = None, overwrite: bool = False) -> list[Path]:
    """Markdown, CSV and PNG leaderboards from a results store; returns the files written. By
    default they go to ``leaderboards/<data set name>/`` (the store's name when it holds several
    test data sets), so two stores never overwrite each other's tables. Rows an older version
    wrote without training seeds are read as trained with the episode seed, and that is said.
    A folder that holds other files but no leaderboard of ours is refused unless ``overwrite``;
    one holding our leaderboard is brought up to date."""
    from fewshot_cryoet.reports.leaderboard import check_leaderboard_folder, render

    if out is not None:
        check_leaderboard_folder(Path(out), overwrite)  # before the store is read
    with existing_store(store) as results:
        frame = results.frame()
        if frame.empty:
            raise SettingError("store", f"store {results.name}: holds no results yet; run bench first")
        if out is None:
            names = frame["dataset"].unique()
            stem = results.location.stem
            name = str(names[0]) if len(names) == 1 else stem
            out = Path("leaderboards") / (re.sub(r"[^\w.-]+", "-", name).strip("-.") or stem)
            check_leaderboard_folder(out, overwrite)
        notes = []
        progress = results.progress_frame()
        unfinished = progress[progress["state"] != "done"]
        if len(unfinished):  # a page from a grid still running (or stopped) must not look finished
            notes.append(f"the grid in this store is unfinished: {len(progress) - len(unfinished)} of {len(progress)} "
                         f"planned cells are complete, and {int(unfinished['stored'].sum()):,} of "
                         f"{int(unfinished['episodes'].sum()):,} test episodes of the others are scored; rows below "
                         "may change when it completes (fsc bench --resume)")
            as_reporter(reporter).log(f"note: {notes[-1]}")
        before = results.rows_before_training_seeds()
        if before and frame["train_seed"].notna().any() and (frame["id"] <= before).any():
            old = frame[frame["id"] <= before]
            notes.append(f"{len(old)} episode rows were written by a version that did not store training seeds; "
                         f"they are read as trained with their episode seed ({', '.join(map(str, sorted(old['seed'].unique())))})")
            as_reporter(reporter).log(f"note: {notes[-1]}")
        return render(frame, results.query_dice_frame(), Path(out), results.location.label,
                      results.query_predictions_frame(),
                      notes=notes)


def bench_status(store: str | Path = DEFAULT_STORE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(claims, cells) of a store that one or several workers fill: every training and every chunk
    of test episodes claimed, by whom, in which state and how long ago its holder's last heartbeat
    was; and per cell (row, data set, SNR, N-way, K-shot, training seed) the test episodes planned
    and stored, the chunks claimed now, and whether it is done, running or pending. Cells of runs
    from before the store recorded plans show their stored episodes only."""
    with existing_store(store) as results:
        claims = results.claims_frame()
        progress = results.progress_frame()
        frame = results.frame()
    claims = pd.DataFrame({
        "work": ["test episodes" if i.startswith("eval-") else "training" for i in claims["identity"]],
        "state": claims["state"].replace({"training": "claimed"}), "worker": claims["owner"], "age": claims["age"],
    })
    summary = (claims.groupby(["work", "state", "worker"]).agg(claims=("age", "size"), newest=("age", "min"))
               .reset_index() if len(claims) else claims)
    if len(summary):
        summary["last heartbeat"] = [f"{a:.0f} s ago" for a in summary.pop("newest")]
    unplanned = frame[~frame["cell"].isin(progress["cell"])]
    if len(unplanned):
        old = unplanned.assign(train_seed=unplanned["train_seed"].fillna(unplanned["seed"]).astype(int)).groupby(
            ["cell", "label", "dataset", "snr", "n_way", "k_shot", "train_seed"])["episode"].nunique()
        progress = pd.concat([progress, old.reset_index(name="stored").assign(state="not planned")])
    cells = progress.drop(columns=["cell"]).rename(columns={"train_seed": "seed", "episodes": "planned"})
    return summary, cells.reset_index(drop=True)


@contextmanager
def existing_store(store: str | Path):
    """A results store that must exist already (reading never creates one), closed afterwards."""
    from fewshot_cryoet.results.store import ResultsStore

    with ResultsStore(store, create=False) as results:
        yield results


def compare(store: str | Path, a: str, b: str) -> pd.DataFrame:
    """One method (a label, or a method name with one row) against another, cell by cell, on the
    episodes both were scored on: the paired difference, its CI and a Wilcoxon test."""
    from fewshot_cryoet.reports.leaderboard import compare as compare_rows

    with existing_store(store) as results:
        return compare_rows(results.frame(), a, b)


def bench_table(frame: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """What ``fsc bench`` prints of its rows: (where they come from, the leaderboard's own accuracy
    table: same order, cells and bold ties)."""
    from fewshot_cryoet.reports.leaderboard import accuracy_table, domain, summarise

    return (domain(frame["train_dataset"].iloc[0], frame["dataset"].iloc[0]),
            accuracy_table(summarise(frame), frame))
