"""What a new user sees in the first hour: an installation that says when its torch and
torchvision do not belong together, progress counted in things a person knows (models of the
grid, training episodes), a warning when no model can be selected, and a leaderboard that says
when its grid is unfinished."""

from __future__ import annotations

import pytest

from click.testing import CliRunner

from fewshot_cryoet import api
from fewshot_cryoet.cli import main
from fewshot_cryoet.core.reporting import CallbackReporter
from fewshot_cryoet.results.store import ResultsStore


@pytest.mark.parametrize("torch_version, vision_version, problem", [
    ("2.14.1", "0.29.1", None),
    ("2.14.1+cu128", "0.29.1+cu128", None),
    ("2.1.0", "0.16.0", None),
    ("2.13.0", "0.29.1", "do not work together; install the pair, e.g. pip install 'torchvision==0.28.*'"),
    ("2.14.1", None, "torchvision is not installed (timm needs it); install torchvision==0.29.*"),
    (None, "0.29.1", "torch is not installed"),
])
def test_a_torch_and_torchvision_that_do_not_belong_together_are_named(torch_version, vision_version, problem):
    said = api.pair_problem(torch_version, vision_version)
    assert said == problem if problem is None else problem in said


def test_this_installation_passes_its_own_check():
    api.check_installation()


def _events(reporter_events: list) -> dict[str, list[tuple[float, float]]]:
    bars: dict[str, list[tuple[float, float]]] = {}
    for event in reporter_events:
        bars.setdefault(event.task, []).append((event.completed, event.total))
    return bars


def test_a_bench_shows_one_bar_for_its_grid_and_trainings_in_episodes(tiny_dataset, tmp_path):
    events, lines = [], []
    reporter = CallbackReporter(on_progress=events.append, on_log=lines.append)
    api.bench(["xcorr", "protonet"], dataset=tiny_dataset, snrs=[1.0], ways=[2], episodes=3, budget="4ep",
              params={"protonet": {"channels": [4, 4]}}, seeds=[0, 1], store=tmp_path / "s.sqlite",
              reporter=reporter)
    bars = _events(events)
    grid = next(v for k, v in bars.items() if k.startswith("grid: models trained and scored"))
    assert grid[0] == (0, 3) and grid[-1] == (3, 3)  # xcorr, and protonet at two training seeds
    training = next(v for k, v in bars.items() if k.startswith("train protonet"))
    assert training[-1] == (4, 4) and all(total == 4 for _, total in training)  # episodes, not 0/1
    # tiny_dataset has one validation class: no model can be selected, and the user is told so
    assert sum("model selection needs at least 2" in line for line in lines) == 1  # once, for two trainings
    assert any("no model selection (fewer than 2 validation classes" in line for line in lines)


def test_a_grid_of_several_levels_shows_its_first_level_before_the_next_starts(tiny_dataset, tmp_path):
    seen, order = [], []
    reporter = CallbackReporter(on_progress=lambda e: order.append(("bar", e.task)), on_log=None)

    def first(rows):
        seen.append(rows.copy())
        order.append(("table", tuple(sorted(rows["snr"].unique()))))

    frame = api.bench(["xcorr", "radial"], dataset=tiny_dataset, snrs=[float("inf"), 1.0], ways=[2], episodes=3,
                      params={"xcorr": {"angular_step": 90}}, store=tmp_path / "s.sqlite", reporter=reporter,
                      on_results=first)
    # first the first leaderboard row (xcorr, complete), then the first level when the grid moved on
    assert len(seen) == 2 and [set(rows["snr"]) for rows in seen] == [{"inf"}, {"inf"}]
    assert set(seen[0]["method"]) == {"xcorr"} and len(seen[0]) == 3
    level = frame[frame["snr"] == "inf"].sort_values(["label", "episode"]).reset_index(drop=True)
    shown = seen[1].sort_values(["label", "episode"]).reset_index(drop=True)
    assert shown[["label", "episode", "accuracy"]].equals(level[["label", "episode", "accuracy"]])  # complete
    # both before any episode of the second level was scored, and nothing after the last model
    table = len(order) - 1 - order[::-1].index(("table", ("inf",)))
    assert not any(kind == "bar" and "SNR 1 " in text + " " for kind, text in order[:table])
    assert any(kind == "bar" and "SNR 1 " in text + " " for kind, text in order[table:])
    assert order[-1][0] == "bar"
    result = CliRunner().invoke(main, ["bench", "--dataset", str(tiny_dataset.path), "--methods", "radial",
                                       "--snr", "inf", "--snr", "1", "--ways", "2", "--episodes", "3",
                                       "--store", str(tmp_path / "cli.sqlite")])
    assert result.exit_code == 0, result.output
    assert result.output.index("so far (the grid goes on): ") < result.output.rindex("accuracy ± 95% CI")


def test_a_leaderboard_of_an_unfinished_grid_says_so(tiny_dataset, tmp_path):
    store = tmp_path / "s.sqlite"
    api.bench(["xcorr"], dataset=tiny_dataset, snrs=[1.0], ways=[2], episodes=3, store=store)
    boards, lines = tmp_path / "done", []
    api.leaderboard(store, boards, reporter=CallbackReporter(on_progress=None, on_log=lines.append))
    assert "unfinished" not in (boards / "leaderboard.md").read_text() and not lines
    with ResultsStore(store) as results:  # another bench asked for more episodes and stopped
        cells = results.progress_frame()["cell"].tolist()
        results.connection.exec_driver_sql("UPDATE planned_cells SET episodes = 10")
        results.connection.commit()
    assert len(cells) == 1
    boards = tmp_path / "unfinished"
    api.leaderboard(store, boards, reporter=CallbackReporter(on_progress=None, on_log=lines.append))
    page = (boards / "leaderboard.md").read_text()
    assert "the grid in this store is unfinished: 0 of 1 planned cells are complete, and 3 of 10" in page
    assert any(line.startswith("note: the grid in this store is unfinished") for line in lines)


def test_data_imported_from_folders_are_summarised_and_exported_without_blanks(tiny_dataset, tmp_path):
    """No "0 particles padded at a tomogram border" for class folders (nothing was cut out of a
    tomogram), and an export of microscope data holds no <NA>: its level is "recorded"."""
    import shutil

    import starfile

    exported = api.export(tiny_dataset, tmp_path / "exported", 1).parent
    for path in sorted((exported / "subtomograms").glob("*.mrc")):
        folder = tmp_path / "mine" / path.stem.split("_", 1)[1]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    data = api.import_data(tmp_path / "mine", tmp_path / "imported")
    _, lines = api.dataset_summary(data)
    assert lines[0].startswith(f"imported from {tmp_path / 'mine'} (folder,") and "padded" not in lines[0]
    star = api.export(data, tmp_path / "again")
    assert "<NA>" not in star.read_text()
    table = starfile.read(star)
    assert set(table["fscSnr"]) == {"recorded"} and "fscSnrMeasured" not in table


def _commands(group, prefix=""):
    import click

    for name, command in sorted(group.commands.items()):
        yield f"{prefix}{name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix}{name} ")


def test_help_writes_defaults_and_ranges_one_way():
    """Every option's help states a default as ``[default: …]`` (click's own form, as
    ``show_default`` prints it) and a range as ``MIN..MAX``."""
    import re

    from fewshot_cryoet.cli import main

    odd = []
    for name, command in _commands(main):
        for param in command.params:
            text = getattr(param, "help", None) or ""
            if re.search(r"\[(?!default: )[^\]]*\]", text) or "MIN-MAX" in text:
                odd.append(f"fsc {name} {param.opts[0]}: {text[-60:]}")
    assert odd == []


def test_fsc_train_takes_snr_levels_repeated_as_fsc_bench_does(tiny_dataset, tmp_path):
    import json

    from click.testing import CliRunner

    from fewshot_cryoet.cli import main

    common = ["train", "--method", "protonet", "--param", "protonet.channels=[4,4]", "--dataset",
              str(tiny_dataset.path), "--budget", "2ep"]
    repeated = CliRunner().invoke(main, [*common, "--snr", "1", "--snr", "inf", "--out", str(tmp_path / "a")])
    commas = CliRunner().invoke(main, [*common, "--snr", "1,inf", "--out", str(tmp_path / "b")])
    assert repeated.exit_code == 0 and commas.exit_code == 0, repeated.output + commas.output
    cards = [json.loads((tmp_path / m / "model.json").read_text()) for m in ("a", "b")]
    assert cards[0]["snr"] == cards[1]["snr"] == "1,inf"
