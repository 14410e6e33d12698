"""The documentation site: it builds strictly, every code block on its pages (and the README's)
is run by a test or says why not, and the plugin tutorial's code installs and benchmarks as a
real package through its entry point.

Blocks are told apart by their fence language and an HTML comment just above the fence:

- ``bash``: every command runs in ``tests/test_doc_commands.py`` on tiny settings;
- ``python`` after ``<!-- api-example -->``, ``<!-- data-example -->`` (``tests/test_api.py``) or
  ``<!-- plugin-example -->`` (here);
- ``toml`` after ``<!-- plugin-pyproject -->`` (here);
- anything after ``<!-- not-run: reason -->``, for what a test cannot supply (a SLURM cluster);
- ``text``: a listing, nothing to run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_BY_A_TEST = {
    "api-example": "python", "data-example": "python", "plugin-example": "python", "plugin-pyproject": "toml",
}


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def fences(page: Path) -> list[tuple[int, str, str]]:
    """(line number, language, the comment line above) for every fenced block of ``page``."""
    lines, found, inside = page.read_text().splitlines(), [], False
    for number, line in enumerate(lines, start=1):
        if line.startswith("```"):
            if not inside:
                above = lines[number - 2].strip() if number > 1 else ""
                found.append((number, line[3:].strip(), above))
            inside = not inside
    return found


def marked_block(page: str, marker: str, language: str = "python") -> str:
    match = re.search(rf"<!-- {marker} -->\s*```{language}\n(.*?)```", (ROOT / page).read_text(), re.S)
    assert match, f"{page} lost its block marked {marker}"
    return match.group(1)


def test_every_code_block_is_run_by_a_test_or_says_why_not():
    unexplained = []
    for page in pages():
        for number, language, above in fences(page):
            marker = re.fullmatch(r"<!-- ([a-z-]+)(?:: (.+))? -->", above)
            name = page.relative_to(ROOT).as_posix()
            if language == "bash" or language == "text":
                continue
            if marker and marker.group(1) == "not-run" and marker.group(2):
                continue
            if marker and RUN_BY_A_TEST.get(marker.group(1)) == language:
                continue
            unexplained.append(f"{name}:{number} ```{language or '(no language)'}")
    assert not unexplained, "blocks no test runs and no marker explains:\n" + "\n".join(unexplained)


def test_the_site_builds_strictly(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", DISABLE_MKDOCS_2_WARNING="true")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    site = tmp_path / "site"
    cli = (site / "reference" / "cli" / "index.html").read_text()
    for command in ("bench", "train", "predict", "tune", "import", "simulate", "leaderboard"):
        assert f'id="fsc-{command}"' in cli, f"the CLI reference lacks fsc {command}"
    api = (site / "reference" / "api" / "index.html").read_text()
    for function in ("bench", "train", "predict", "simulate", "leaderboard"):
        assert re.search(rf'id="fewshot_cryoet\.api\.[a-z]+\.{function}"', api), f"the API reference lacks {function}"
    for board in ("synthetic", "shared-templates", "robustness"):
        assert (site / "leaderboards" / board / "index.html").exists()
    assert (site / "leaderboards" / "synthetic" / "accuracy.png").exists()
    started = (site / "getting-started" / "index.html").read_text()  # the README's sections, included
    assert "Python ≥ 3.10" in started and "The main job benchmarks the baselines" in started


def test_the_plugin_tutorial_installs_and_benchmarks_as_a_package(tiny_dataset, tmp_path):
    page = "docs/tutorials/plugins.md"
    package = tmp_path / "mypackage-src"
    (package / "mypackage").mkdir(parents=True)
    (package / "mypackage" / "__init__.py").write_text("")
    (package / "mypackage" / "plugin.py").write_text(marked_block(page, "plugin-example"))
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "mypackage"\nversion = "0.1.0"\n\n[tool.setuptools]\npackages = ["mypackage"]\n\n'
        + marked_block(page, "plugin-pyproject", "toml"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(package)], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(site), COLUMNS="250")
    env.pop("FSC_DISABLE_PLUGINS", None)

    def fsc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fewshot_cryoet", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)

    listed = fsc("methods")
    assert listed.returncode == 0 and "mymethod" in listed.stdout and "mypackage" in listed.stdout, listed.stderr
    kit = subprocess.run([sys.executable, "-c", "from mypackage.plugin import MyMethod; "
                          "from fewshot_cryoet.testing import check_method; print(len(check_method(MyMethod)))"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert kit.returncode == 0 and int(kit.stdout.split()[-1]) > 5, kit.stderr
    bench = fsc("bench", "--dataset", str(tiny_dataset.path), "--methods", "mymethod,mymethod/sharp", "--snr", "1",
                "--ways", "2", "--episodes", "4", "--store", "plugin.sqlite")
    assert bench.returncode == 0, bench.stderr[-3000:]
    import pandas as pd
    import sqlite3

    with sqlite3.connect(tmp_path / "plugin.sqlite") as connection:
        rows = pd.read_sql("SELECT method, variant, accuracy FROM episodes", connection)
    assert sorted(rows.groupby("variant").size().items()) == [("default", 4), ("sharp", 4)]
    assert set(rows["method"]) == {"mymethod"} and rows["accuracy"].between(0, 1).all()
    bad = fsc("bench", "--dataset", str(tiny_dataset.path), "--methods", "mymethod", "--param", "mymethod.sharpness=-1",
              "--store", "bad.sqlite")
    assert bad.returncode == 2 and "sharpness" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_the_front_pages_stay_short(page):
    assert len((ROOT / page).read_text().splitlines()) <= 250
