"""The README, executed: every command of every shell block runs, on tiny settings, as users copy it.

Each block's commands run in a scratch folder laid out like a checkout (``../shared`` beside it),
in the README's own section order except where a section uses data another section makes. Tiny
settings are applied by rewriting option values (budgets, episodes, trials, particles per class),
never by changing what a command does; placeholders the README leaves to the reader (``NAME``,
``...``, ``[optional]`` parts, ``picks/``, ``particles.star``, ``maps/``, ``model.cif``,
``data/my-domain``) are filled with real files made here. A README command this test does not
know how to run fails the test, so the README cannot grow commands that nobody runs.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import starfile
from click.testing import CliRunner

from fewshot_cryoet import api
from fewshot_cryoet.cli import main
from fewshot_cryoet.datasets.simulate import SimulationConfig

README = Path(__file__).resolve().parents[1] / "README.md"

#: Set-up and test commands: run by ``.ci/run`` itself (this test is part of the second).
NOT_RUN_HERE = ("python3 -m venv", "pip install", "python -m pytest")

#: Sections whose blocks run first, because later sections use what they make (``data/shrec``).
FIRST = ("Simulating subtomograms",)

#: Option values that decide only how long a command takes, with their tiny replacements.
TINY_VALUES = {
    "--episodes": "2", "--trials": "2", "--per-class": "6", "--ways": "2", "--val-episodes": "2",
}
#: Options added where a command lacks them (same purpose).
TINY_ADDED = {
    "bench": ["--episodes", "2", "--ways", "2", "--per-class", "6"],
    "tune run": ["--val-episodes", "2", "--per-class", "6"],
    "tune confirm": ["--episodes", "2", "--per-class", "6"],
    "train": ["--per-class", "6"],
    "simulate": ["--per-class", "6"],
}


def shell_blocks() -> list[tuple[str, list[str]]]:
    """(section title, commands) per ``bash`` block: continuations joined, comments dropped."""
    section, blocks = "", []
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## ") or line.startswith("### "):
            section = line.lstrip("#").strip()
        if line.strip() == "```bash":
            body = []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            text = re.sub(r"\\\n\s*", " ", "\n".join(body))
            commands = [re.sub(r"\s+#.*$", "", c).strip() for c in text.splitlines()]
            blocks.append((section, [c for c in commands if c and not c.startswith("#")]))
        i += 1
    return blocks


def tiny(command: str, previous_bench: str) -> list[list[str]]:
    """The argument lists to run for one README command line (``a && b`` gives two)."""
    command = re.sub(r"\s*\[[^\]]*\]", "", command)  # optional parts, as the reader may leave them out
    command = command.replace("fsc bench ...", previous_bench).replace("NAME", "readme")
    runs = []
    for part in command.split("&&"):
        words = shlex.split(part)
        assert words[0] == "fsc", f"README command not run by this test: {part.strip()}"
        words = words[1:]
        budgets = [i for i, w in enumerate(words) if w == "--budget"]
        for rank, i in enumerate(budgets, start=1):  # a budget curve keeps its increasing order
            words[i + 1] = f"{rank}ep"
        for i, word in enumerate(words[:-1]):
            if word in TINY_VALUES:
                words[i + 1] = TINY_VALUES[word]
        sub = " ".join(words[:2]) if words[:2] in (["tune", "run"], ["tune", "confirm"]) else words[0]
        if sub in ("bench", "tune run", "train") and not budgets:
            words += ["--budget", "1ep"]
        if sub == "tune run":
            words += ["--study", "readme"]
        if sub == "simulate" and "--scene" in words:  # a smaller slab, as many particles per class
            words += ["--scene-size", "128,128,64", "--scene-particles", "60"]
        for option, value in zip(TINY_ADDED.get(sub, [])[::2], TINY_ADDED.get(sub, [])[1::2]):
            if option not in words and not (option == "--per-class" and "--dataset" in words):
                words += [option, value]
        runs.append(words)
    return runs


def _placeholders(root: Path, shared: Path) -> None:
    """The reader's own files that README commands name: picked supports, particles to classify,
    a folder of maps plus an mmCIF model, and a second imaging domain."""
    import gemmi

    maps = root / "maps"
    maps.mkdir()
    for template in sorted((shared / "data" / "templates").glob("*.mrc"))[:2]:
        shutil.copy(template, maps / template.name)
    pdb = sorted((shared / "data" / "pdb").glob("*.pdb"))[0]
    gemmi.read_structure(str(pdb)).make_mmcif_document().write_file(str(root / "model.cif"))
    mine = api.simulate(root / "data" / "my-domain", classes=6, per_class=6, snrs=[0.5], seed=5,
                        config=SimulationConfig(route="fourier"), val_classes=["syn004", "syn005"],
                        test_classes=["syn000", "syn001", "syn002"])
    for name, first in (("sim-a", 0), ("sim-b", 10)):  # two domains with disjoint classes
        api.simulate(root / "data" / name, classes=6, synthetic_seed=first, per_class=6, snrs=[1000], seed=first,
                     config=SimulationConfig(route="fourier"))
    star = api.export(mine, root / "mine-export", snr=0.5)
    particles = starfile.read(star)
    for column in ("rlnImageName", "fscMaskName"):  # the reader's tables name files by absolute path
        particles[column] = [str(root / "mine-export" / p) for p in particles[column]]
    test = particles[particles["fscSplit"] == "test"]
    picked = test.groupby("fscClass").head(1)
    for path, name in zip(picked["rlnImageName"], picked["fscClass"]):
        (root / "picks" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "picks" / name / Path(path).name)
    pd.DataFrame({"path": picked["rlnImageName"], "class": picked["fscClass"]}).to_csv(root / "picks.csv", index=False)
    for path, name in zip(particles["rlnImageName"], particles["fscClass"]):  # every class, as folders
        (root / "my_subtomograms" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "my_subtomograms" / name / Path(path).name)
    queries = test.drop(index=picked.index)
    starfile.write(queries, root / "particles.star")
    (root / "tomo1_subtomos").mkdir()
    for path in queries["rlnImageName"][:4]:
        shutil.copy(path, root / "tomo1_subtomos" / Path(path).name)


def test_every_readme_command_runs_on_tiny_settings(shared_data, tmp_path, monkeypatch):
    blocks = shell_blocks()
    assert len(blocks) >= 6
    root = tmp_path / "checkout"
    root.mkdir()
    (tmp_path / "shared").symlink_to(shared_data.parent if shared_data.name == "data" else shared_data)
    monkeypatch.chdir(root)
    monkeypatch.setenv("FSC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "200")
    _placeholders(root, tmp_path / "shared")
    ordered = [b for b in blocks if b[0] in FIRST] + [b for b in blocks if b[0] not in FIRST]
    runner, previous_bench, ran = CliRunner(), "fsc bench", 0
    for section, commands in ordered:
        for command in commands:
            if command.startswith(NOT_RUN_HERE):
                continue
            for words in tiny(command, previous_bench):
                result = runner.invoke(main, words, catch_exceptions=False)
                assert result.exit_code == 0, f"README ({section}): `{command}` ran as `fsc {' '.join(words)}` " \
                                              f"and failed:\n{result.output[-3000:]}"
                ran += 1
            if command.startswith("fsc bench") and "..." not in command:
                previous_bench = command.split("&&")[0].strip()
    assert ran >= 25
    assert (root / "leaderboards" / "synthetic" / "leaderboard.md").exists()
    assert (root / "results" / "predictions.csv").exists() and (root / "results-xcorr" / "predictions.csv").exists()
