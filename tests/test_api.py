"""The Python API as the documentation shows it, run as written (the layering rules it rests on are in
test_architecture.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fewshot_cryoet"


def marked_block(page: str, marker: str) -> str:
    """The Python block that follows ``<!-- marker -->`` on a documentation page."""
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", (ROOT / page).read_text(), re.S)
    assert match, f"{page} lost its block marked {marker}"
    return match.group(1)


def test_the_getting_started_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    page = "docs/getting-started.md"
    exec(compile(marked_block(page, "api-example"), page, "exec"), namespace)  # noqa: S102 - our own docs
    frame, predictions, card = namespace["frame"], namespace["predictions"], namespace["card"]
    assert set(frame["method"]) == {"protonet", "xcorr"} and len(frame) == 40
    assert frame.groupby("label")["episode"].nunique().eq(20).all()  # both scored on the same 20 episodes
    assert card.method == "protonet" and card.fit["episodes"] == 20
    assert len(predictions) == 2 * 10 - 2 and set(predictions["predicted_class"]) <= {"syn000", "syn003"}
    assert (tmp_path / "demo-boards" / "leaderboard.md").exists()
    assert "accuracy on unseen classes" in capsys.readouterr().out


def test_api_results_are_plain_data(tiny_dataset, tmp_path):
    from fewshot_cryoet import api

    frame = api.bench("xcorr", dataset=tiny_dataset, snrs=[1.0], ways=[2], episodes=3, queries_per_class=2,
                      params={"xcorr": {"angular_step": 60}}, store=tmp_path / "r.sqlite")
    assert isinstance(frame, pd.DataFrame) and len(frame) == 3 and frame.attrs["failures"] == []


def test_every_option_has_help():
    import click

    from fewshot_cryoet.cli import main

    def commands(group, prefix=""):
        for name, command in group.commands.items():
            yield f"{prefix}{name}", command
            if isinstance(command, click.Group):
                yield from commands(command, f"{prefix}{name} ")

    missing = [f"fsc {name} {param.opts[0]}" for name, command in commands(main) for param in command.params
               if isinstance(param, click.Option) and not param.help and param.opts[0] not in ("--help",)]
    assert not missing, missing


def test_the_data_set_example_of_the_docs_runs(tmp_path, monkeypatch):
    import numpy as np

    from fewshot_cryoet import api
    from fewshot_cryoet.datasets.simulate import SimulationConfig

    page = "docs/reference/data-sets.md"
    block = marked_block(page, "data-example")
    monkeypatch.chdir(tmp_path)
    api.simulate("data/shrec", classes=6, per_class=6, snrs=[1000, 0.5], seed=0,
                 config=SimulationConfig(box=16, voxel_size=20.0, route="fourier"),
                 test_classes=["syn000", "syn001", "syn002", "syn003"], val_classes=["syn004"])
    namespace: dict = {}
    exec(compile(block, page, "exec"), namespace)  # noqa: S102 - our own docs
    assert isinstance(namespace["volumes"], np.memmap) and not isinstance(namespace["x"], np.memmap)
    assert namespace["x"].shape == (24, 16, 16, 16) and namespace["x"].dtype == np.float32
    episode = namespace["episode"]
    assert episode.support.shape == (4, 1, 16, 16, 16) and episode.query.shape == (20, 1, 16, 16, 16)
