"""The README and the documentation, executed: every command of every shell block runs, on tiny
settings, as users copy it.

Each block's commands run in a scratch folder laid out like a checkout (``../shared`` beside it),
page by page (the README first, then the docs in their file order) and in each page's own order,
except that the simulation tutorial runs first, because other pages use the data it makes. Tiny
settings are applied by rewriting option values (budgets, episodes, trials, particles per class),
never by changing what a command does; placeholders the pages leave to the reader (``NAME``,
``...``, ``[optional]`` parts, ``picks/``, ``particles.star``, ``maps/``, ``model.cif``,
``data/my-domain``) are filled with real files made here. A command this test does not know how to
run fails the test, so no page can grow commands that nobody runs; a block a test cannot run is
marked on its page (see ``tests/test_docs.py``).
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

ROOT = Path(__file__).resolve().parents[1]

#: Set-up and test commands are run by ``.ci/run`` itself (this test is part of the second), and
#: the site build by ``tests/test_docs.py``.
NOT_RUN_HERE = ("python3 -m venv", "pip install", "python -m pytest", "mkdocs ")

#: Pages whose blocks run first, because later pages use what they make (``data/shrec``).
FIRST = ("docs/tutorials/simulate.md",)


def pages() -> list[Path]:
    """The README, then every hand-written page of the documentation site, in file order (the
    leaderboard pages are generated from ``leaderboards/`` and their commands are the plan of
    ``benchmarks/regenerate_leaderboards.py``, checked by ``tests/test_regeneration.py``)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

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


def shell_blocks(page: Path) -> list[tuple[str, list[str]]]:
    """(page: section title, commands) per ``bash`` block of ``page`` that is not marked
    ``<!-- not-run: … -->``: continuations joined, comments dropped."""
    name = page.relative_to(ROOT).as_posix()
    section, blocks = "", []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        marked = i > 0 and lines[i - 1].startswith("<!-- not-run:")
        if line.strip() == "```bash" and not marked:
            body = []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            text = re.sub(r"\\\n\s*", " ", "\n".join(body))
            commands = [re.sub(r"\s+#.*$", "", c).strip() for c in text.splitlines()]
            blocks.append((f"{name}: {section}", [c for c in commands if c and not c.startswith("#")]))
        i += 1
    return blocks


def tiny(command: str, previous_bench: str) -> list[list[str]]:
    """The argument lists to run for one command line of a page (``a && b`` gives two)."""
    command = re.sub(r"\s*\[[^\]]*\]", "", command)  # optional parts, as the reader may leave them out
    command = command.replace("fsc bench ...", previous_bench).replace("NAME", "readme")
    runs = []
    for part in command.split("&&"):
        words = shlex.split(part)
        assert words[0] == "fsc", f"command of a page not run by this test: {part.strip()}"
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
    """The reader's own files that the pages' commands name: picked supports, particles to classify,
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


def test_every_command_of_the_readme_and_the_docs_runs_on_tiny_settings(shared_data, tmp_path, monkeypatch):
    blocks = [block for page in pages() for block in shell_blocks(page)]
    assert len(blocks) >= 10 and any(section.startswith("README.md") for section, _ in blocks)
    root = tmp_path / "checkout"
    root.mkdir()
    (tmp_path / "shared").symlink_to(shared_data.parent if shared_data.name == "data" else shared_data)
    monkeypatch.chdir(root)
    monkeypatch.setenv("FSC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "200")
    _placeholders(root, tmp_path / "shared")
    first = [b for b in blocks if b[0].split(":")[0] in FIRST]
    ordered = first + [b for b in blocks if b not in first]
    runner, previous_bench, ran, seen = CliRunner(), "fsc bench", 0, set()
    for section, commands in ordered:
        for command in commands:
            if command.startswith(NOT_RUN_HERE) or command in seen:  # a command two pages show runs once
                continue
            seen.add(command)
            for words in tiny(command, previous_bench):
                result = runner.invoke(main, words, catch_exceptions=False)
                assert result.exit_code == 0, f"{section}: `{command}` ran as `fsc {' '.join(words)}` " \
                                              f"and failed:\n{result.output[-3000:]}"
                ran += 1
            if command.startswith("fsc bench") and "..." not in command:
                previous_bench = command.split("&&")[0].strip()
    assert ran >= 25
    assert (root / "leaderboards" / "synthetic" / "leaderboard.md").exists()
    assert (root / "results" / "predictions.csv").exists() and (root / "results-xcorr" / "predictions.csv").exists()
