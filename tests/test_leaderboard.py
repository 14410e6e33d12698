"""Leaderboards never merge different configurations, never count an episode twice, say what
training each row got, and go to a folder of their own by default."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from fewshot_cryoet import api
from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.reporting import CallbackReporter
from fewshot_cryoet.reports.leaderboard import summarise
from fewshot_cryoet.results.store import ResultsStore


@pytest.fixture(scope="module")
def two_configurations(tiny_val2_dataset, tmp_path_factory):
    """One store: xcorr at two angular steps and protonet, on the same 10 episodes."""
    store = tmp_path_factory.mktemp("boards") / "two.sqlite"
    common = dict(dataset=tiny_val2_dataset, snrs=[1.0], ways=[2], episodes=10, queries_per_class=2, store=store)
    api.bench(["xcorr"], params={"xcorr": {"angular_step": 60}}, **common)
    api.bench(["xcorr", "protonet"], params={"xcorr": {"angular_step": 90}, "protonet": {"channels": [4, 8]}},
              budget="4ep", resume=True, **common)
    return store


def test_configurations_sharing_a_method_stay_separate_rows(two_configurations):
    frame = ResultsStore(two_configurations).frame()
    summary = summarise(frame)
    xcorr = summary[summary["method"] == "xcorr"]
    assert sorted(xcorr["label"]) == ["xcorr (angular_step=60)", "xcorr (angular_step=90)"]
    assert (summary["episodes"] == 10).all()  # each row counts its own 10 episodes, not 20


def test_a_label_shared_by_configurations_says_what_differs(two_configurations):
    frame = ResultsStore(two_configurations).frame()
    frame.loc[frame["method"] == "xcorr", "label"] = "xcorr"  # e.g. rows written before labels showed settings
    labels = set(summarise(frame)["label"])
    assert {label for label in labels if label.startswith("xcorr")} == {
        f"xcorr · params {h}" for h in frame.loc[frame["method"] == "xcorr", "params_hash"].unique()}


def test_a_filtered_read_is_the_matching_rows_of_a_whole_one(two_configurations):
    store = ResultsStore(two_configurations)
    whole = store.frame()
    xcorr = store.frame(method="xcorr", snr=["1", "0.5"])
    expected = whole[whole["method"] == "xcorr"].reset_index(drop=True)
    pd.testing.assert_frame_equal(xcorr, expected, check_dtype=False)
    assert len(xcorr) == 20
    # columns NULL in every row read (xcorr has no training, no Dice) keep the type they have in a whole read
    assert xcorr["fit_seconds"].dtype == float and xcorr["dice"].dtype == float
    assert xcorr["checkpoint"].isna().all() and xcorr["checkpoint"].dtype == whole["checkpoint"].dtype
    assert store.frame(method="no-such-method").empty
    with pytest.raises(ValueError, match="no column colour"):
        store.frame(colour="red")


def test_an_episode_counted_twice_in_a_row_is_refused(two_configurations):
    frame = ResultsStore(two_configurations).frame()
    damaged = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    with pytest.raises(FscError, match="twice"):
        summarise(damaged)


def test_rows_show_training_and_default_folder_is_the_data_set(two_configurations, tmp_path):
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        written = api.leaderboard(two_configurations)
    finally:
        os.chdir(here)
    assert written[0] == __import__("pathlib").Path("leaderboards/tiny-val2/leaderboard.md")
    text = (tmp_path / written[0]).read_text()
    # 4 episodes × 2 ways (the split has 2 training classes, fewer than train_way 5) × (1 + 5) volumes
    assert "protonet (channels=[4, 8]): 4ep (SNR 1: 4 episodes, 48 examples," in text
    assert "xcorr (angular_step=60): none" in text


def test_paired_test_finds_a_difference_the_intervals_hide():
    """Two methods whose per-episode accuracies differ by a small, consistent amount on hard and
    easy episodes alike: overlapping intervals, yet the paired test sees it."""
    import numpy as np

    from fewshot_cryoet.evaluation.metrics import paired_comparison, significantly_worse

    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.3, 1.0, size=200)
    a = np.clip(difficulty + 0.03 + rng.normal(0, 0.01, 200), 0, 1)
    b = np.clip(difficulty, 0, 1)
    result = paired_comparison(a, b)
    assert result.significant and result.verdict("a", "b") == "a better" and result.mean_difference > 0
    ci = 1.96 * a.std(ddof=1) / np.sqrt(200)
    assert not significantly_worse(a.mean(), ci, b.mean(), 1.96 * b.std(ddof=1) / np.sqrt(200))  # unpaired: a tie
    same = paired_comparison(a, a)
    assert same.p_value == 1.0 and same.verdict() == "tie"


def test_compare_cell_by_cell_and_refuse_unknown_methods(two_configurations):
    from click.testing import CliRunner

    from fewshot_cryoet.cli import main

    table = api.compare(two_configurations, "xcorr (angular_step=60)", "protonet")
    assert len(table) == 1 and table["episodes"].iloc[0] == 10
    assert table["verdict"].iloc[0] in {"tie", "xcorr (angular_step=60) better", "protonet better"}
    with pytest.raises(FscError, match="several rows of xcorr"):
        api.compare(two_configurations, "xcorr", "protonet")
    result = CliRunner().invoke(main, ["leaderboard", "--store", str(two_configurations), "--compare", "siamese",
                                       "protonet"])
    assert result.exit_code == 2 and "'siamese': not in the store" in result.output


def test_every_accuracy_table_ends_with_chance(two_configurations):
    from fewshot_cryoet.reports.leaderboard import CHANCE, accuracy_table

    frame = ResultsStore(two_configurations).frame()
    table = accuracy_table(summarise(frame), frame)
    assert table.index[-1] == CHANCE and set(table.loc[CHANCE]) == {"0.500"}


def test_training_seeds_share_the_test_episodes_and_widen_the_interval(tiny_val2_dataset, tmp_path):
    store = tmp_path / "seeds.sqlite"
    common = dict(dataset=tiny_val2_dataset, snrs=[1.0], ways=[2], episodes=8, queries_per_class=2, store=store,
                  params={"protonet": {"channels": [4, 8]}}, budget="3ep")
    api.bench(["protonet", "xcorr"], **{**common, "params": {**common["params"], "xcorr": {"angular_step": 90}}})
    frame = api.bench(["protonet"], seeds=[0, 1, 2], resume=True, **common)
    assert sorted(frame["train_seed"].fillna(frame["seed"]).unique()) == [0, 1, 2]
    assert frame.groupby("train_seed", dropna=False)["episode"].apply(sorted).map(tuple).nunique() == 1  # same episodes
    models = sorted(p.name for p in (tmp_path / "seeds.models").glob("protonet-*.pt"))
    assert len(models) == 3 and all(m.endswith(f"-{s}.pt") for m, s in zip(models, [0, 1, 2]))  # seed 0 reused
    summary = summarise(ResultsStore(store).frame())
    proto = summary[summary["method"] == "protonet"].iloc[0]
    assert proto["seeds"] == 3 and proto["episodes"] == 8 and proto["ci95"] > 0
    assert summary[summary["method"] == "xcorr"]["seeds"].iloc[0] == 1
    with pytest.raises(FscError, match="1 given twice"):
        api.bench(["protonet"], seeds=[0, 1, 1], resume=True, **common)
    # --compare shows each side's per-seed range, so a paired verdict can be read against the seeds
    compared = api.compare(store, "protonet", "xcorr").iloc[0]
    per_seed = frame.groupby(frame["train_seed"].fillna(frame["seed"]))["accuracy"].mean()
    xcorr = ResultsStore(store).frame().query("method == 'xcorr'")["accuracy"].mean()
    apart = "apart" if per_seed.min() > xcorr or per_seed.max() < xcorr else "overlap"
    assert compared["per seed"] == f"{per_seed.min():.3f}–{per_seed.max():.3f} vs {xcorr:.3f}: {apart}"


def test_budget_curves_train_at_each_budget_and_are_drawn(tiny_val2_dataset, tmp_path):
    store = tmp_path / "curve.sqlite"
    protonet = {"channels": [4, 8], "val_every": 2}
    said = []
    api.bench(["protonet", "xcorr"], dataset=tiny_val2_dataset, snrs=[1.0], ways=[2], episodes=6, queries_per_class=2,
              store=store, budget=["2ep", "4ep", "8ep"], params={"protonet": protonet, "xcorr": {"angular_step": 90}},
              reporter=CallbackReporter(on_log=said.append))
    frame = ResultsStore(store).frame()
    assert sorted(frame[frame["method"] == "protonet"]["budget"].unique()) == ["2ep", "4ep", "8ep"]
    assert set(frame[frame["method"] == "xcorr"]["budget"]) == {""} and (frame["method"] == "xcorr").sum() == 6
    written = api.leaderboard(store, tmp_path / "boards")
    curves = pd.read_csv(tmp_path / "boards" / "budget_curves.csv")
    assert list(curves["fit_episodes"]) == [2, 4, 8] and set(curves["row"]) == {"protonet (channels=[4, 8], val_every=2)"}
    assert tmp_path / "boards" / "budget_curves.png" in written
    # the 8ep model was trained and scored first, yet the table reads in increasing budget
    table = (tmp_path / "boards" / "leaderboard.md").read_text().split("### Accuracy")[1]
    budgets = [line.split(" · budget ")[1].split()[0] for line in table.splitlines() if " · budget " in line]
    assert budgets[:3] == ["2ep", "4ep", "8ep"]
    # the curve table writes SNR as a level, episodes and examples as counts, seconds whole
    page = (tmp_path / "boards" / "leaderboard.md").read_text()
    curve_rows = [line for line in page.split("## Accuracy against training budget")[1].splitlines()
                  if line.startswith("| ") and "protonet" in line]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in curve_rows]
    assert [c[2] for c in cells] == ["1"] * 3 and [c[6] for c in cells] == ["2", "4", "8"]
    assert all(c[8].isdigit() for c in cells)  # fit_seconds
    assert "Test episodes per cell: 6 — **quick run" in page
    # one training (8ep) left the 2ep and 4ep models, which the runs at those budgets reused
    assert sum("trained 8 episodes" in line for line in said) == 1
    smaller = [line for line in said if "trained 2 episodes" in line or "trained 4 episodes" in line]
    assert len(smaller) == 2 and all("kept from this training" in line for line in smaller)
    alone = tmp_path / "alone.sqlite"  # the 4ep model from the 8ep training equals one trained alone
    api.bench(["protonet"], dataset=tiny_val2_dataset, snrs=[1.0], ways=[2], episodes=6, queries_per_class=2,
              store=alone, budget="4ep", params={"protonet": protonet})
    mine = frame[(frame["method"] == "protonet") & (frame["budget"] == "4ep")].sort_values("episode")
    theirs = ResultsStore(alone).frame().sort_values("episode")
    assert list(mine["accuracy"]) == list(theirs["accuracy"]) and list(mine["checkpoint"]) == list(theirs["checkpoint"])
    with pytest.raises(FscError, match="strictly increasing"):
        api.bench(["protonet"], dataset=tiny_val2_dataset, store=store, budget=["4ep", "2ep"])
    with pytest.raises(FscError, match="strictly increasing"):
        api.bench(["protonet"], dataset=tiny_val2_dataset, store=store, budget=["4ep", "1m"])


def test_per_class_results_and_confusion_from_stored_queries(two_configurations, tmp_path):
    store = ResultsStore(two_configurations)
    predictions = store.query_predictions_frame()
    assert len(predictions) == 3 * 10 * 2 * 2  # 3 rows × 10 episodes × 2 classes × 2 queries
    written = api.leaderboard(two_configurations, tmp_path / "boards")
    per_class = pd.read_csv(tmp_path / "boards" / "per_class.csv")
    frame = store.frame()
    for label, part in per_class.groupby("label"):
        # the recall of a class, weighted by its queries, is the row's accuracy (equal queries per episode)
        accuracy = frame[frame["label"] == label]["accuracy"].mean()
        assert abs((part["recall"] * part["queries"]).sum() / part["queries"].sum() - accuracy) < 1e-9
    confusion = pd.read_csv(tmp_path / "boards" / "confusion.csv")
    assert confusion.groupby("label")["count"].sum().eq(40).all()
    assert any(p.name.startswith("confusion_protonet") for p in written)
    # the page's per-class table has one column per field, not a Python tuple per row
    page = (tmp_path / "boards" / "leaderboard.md").read_text()
    table = page.split("## Per-class results")[1].split("###")[0]
    header = [c.strip() for c in table.split("\n| ")[1].split("|")[:5]]
    assert header[:4] == ["label", "domain", "snr", "n_way"]
    assert "('" not in page and "–10;" not in page


def test_calibration_error_is_the_gap_between_confidence_and_accuracy():
    from fewshot_cryoet.reports.leaderboard import calibration

    rows = [{"label": "m", "method": "m", "variant": "default", "params_hash": "h", "budget": "", "seed": 0,
             "train_dataset": "", "dataset": "d", "snr": "1", "n_way": 2, "truth": "a",
             "predicted": "a" if i < 6 else "b", "confidence": 0.9} for i in range(10)]
    table = calibration(pd.DataFrame(rows))
    assert len(table) == 1 and abs(table["ece"].iloc[0] - 0.3) < 1e-9  # says 0.9, right 6 times in 10
    assert abs(table["accuracy"].iloc[0] - 0.6) < 1e-9 and abs(table["mean_confidence"].iloc[0] - 0.9) < 1e-9


def test_rows_from_before_training_seeds_are_read_as_the_episode_seed_and_it_is_said(tiny_val2_dataset, tmp_path):
    import sqlite3

    store = tmp_path / "old.sqlite"
    settings = dict(dataset=tiny_val2_dataset, snrs=[1.0], ways=[2], episodes=4, queries_per_class=1, budget="2ep",
                    params={"protonet": {"channels": [4, 4]}}, store=store)
    api.bench(["protonet"], **settings)
    with sqlite3.connect(store) as db:  # make it a schema-4 store, as an older version wrote it
        db.execute("ALTER TABLE episodes DROP COLUMN train_seed")
        db.execute("DROP TABLE snr_levels")
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    api.bench(["protonet"], seeds=[0, 1], resume=True, **settings)  # seed 0 is the old rows; seed 1 is new
    messages: list[str] = []
    from fewshot_cryoet.core.reporting import CallbackReporter

    api.leaderboard(store, tmp_path / "boards", reporter=CallbackReporter(on_progress=None, on_log=messages.append))
    assert any("4 episode rows were written by a version that did not store training seeds" in m for m in messages)
    assert "read as trained with their episode seed (0)" in (tmp_path / "boards" / "leaderboard.md").read_text()
    row = pd.read_csv(tmp_path / "boards" / "leaderboard.csv").iloc[0]
    assert row["seeds"] == 2 and row["episodes"] == 4
