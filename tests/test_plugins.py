"""Third-party plugins, really installed through their entry points (pip into a folder on
PYTHONPATH), exercised through the ``fsc`` command in subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    sources = tmp_path_factory.mktemp("sources")  # build from copies: pip leaves build/ folders behind
    for name in ("example", "broken"):
        shutil.copytree(PLUGINS / name, sources / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(sources / "example"), str(sources / "broken")],
        check=True, capture_output=True,
    )
    env = dict(os.environ, PYTHONPATH=str(target), COLUMNS="250")
    env.pop("FSC_DISABLE_PLUGINS", None)
    return env


def fsc(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fewshot_cryoet", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_methods_lists_plugins_and_reports_broken_ones_once(plugin_env):
    result = fsc(plugin_env, "methods")
    assert result.returncode == 0, result.stderr
    assert "shellseg" in result.stdout and "fsc-example-plugin 0.1.0" in result.stdout
    assert "default, strict" in result.stdout
    for name in ("protonet", "siamese", "xcorr"):
        line = next(l for l in result.stdout.splitlines() if f"│ {name} " in l)
        assert "built-in" in line  # the clashing impostor did not replace it
    assert "half-registered" not in result.stdout  # its plugin's hook raised: rolled back
    errors = result.stderr
    assert errors.count("broken-import (fsc-broken-plugin 0.0.1)") == 1
    assert errors.count("broken-hook (fsc-broken-plugin 0.0.1)") == 1 and "hook exploded" in errors
    assert errors.count("clash (fsc-broken-plugin 0.0.1)") == 1 and "already registered by built-in" in errors
    # a plugin calling sys.exit at import is isolated like any other failure (and --help still works)
    assert errors.count("broken-exit (fsc-broken-plugin 0.0.1)") == 1 and "SystemExit" in errors
    help_text = fsc(plugin_env, "--help")
    assert help_text.returncode == 0 and "bench" in help_text.stdout


def test_plugins_can_be_disabled_and_add_commands(plugin_env):
    env = dict(plugin_env, FSC_DISABLE_PLUGINS="fsc-example-plugin,broken-import,broken-hook,clash,broken-exit")
    result = fsc(env, "methods")
    assert result.returncode == 0 and "shellseg" not in result.stdout and "warning" not in result.stderr
    hello = fsc(plugin_env, "example-hello")
    assert hello.returncode == 0 and "hello from fsc-example-plugin" in hello.stdout


def test_conformance_kit_on_the_installed_plugin(plugin_env):
    script = (
        "from fewshot_cryoet.plugins import get_plugins\n"
        "from fewshot_cryoet.testing import check_method\n"
        "passed = check_method(get_plugins().methods.get('shellseg'))\n"
        "print(len(passed), 'checks passed')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env=plugin_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "checks passed" in result.stdout and int(result.stdout.split()[0]) >= 14


def test_bench_with_a_segmenting_plugin_reports_dice(plugin_env, tiny_dataset, tmp_path):
    store = tmp_path / "r.sqlite"
    result = fsc(plugin_env, "bench", "--dataset", tiny_dataset.path, "--methods", "shellseg,shellseg/strict,xcorr",
                 "--param", "xcorr.angular_step=60", "--ways", "2,3", "--queries", "2", "--snr", "inf",
                 "--episodes", "10", "--store", store)
    assert result.returncode == 0, result.stderr
    assert "quick run" in result.stdout and "shellseg/strict" in result.stdout
    boards = fsc(plugin_env, "leaderboard", "--store", store, "--out", tmp_path / "boards")
    assert boards.returncode == 0, boards.stderr
    markdown = (tmp_path / "boards" / "leaderboard.md").read_text()
    assert "Segmentation Dice" in markdown and "Dice per test class" in markdown
    dice_line = next(l for l in markdown.split("Segmentation Dice")[1].splitlines() if l.startswith("| xcorr"))
    assert "—" in dice_line  # xcorr does not segment
    assert (tmp_path / "boards" / "dice_per_class.csv").exists()
    rows = subprocess.run([sys.executable, "-c", f"from fewshot_cryoet.results.store import ResultsStore; "
                           f"f = ResultsStore(r'{store}').frame(); print(sorted(set(f.plugin)))"],
                          env=plugin_env, capture_output=True, text=True)
    assert "fsc-example-plugin 0.1.0" in rows.stdout and "built-in" in rows.stdout


def test_cli_bad_input_is_one_line(plugin_env, tiny_dataset, tmp_path):
    unknown = fsc(plugin_env, "bench", "--methods", "protonet,nonsense", "--store", tmp_path / "x.sqlite")
    assert unknown.returncode == 2 and "unknown method(s) nonsense; available:" in unknown.stderr
    assert "shellseg" in unknown.stderr
    too_many = fsc(plugin_env, "bench", "--dataset", tiny_dataset.path, "--methods", "xcorr", "--ways", "9",
                   "--snr", "1", "--store", tmp_path / "y.sqlite")
    assert too_many.returncode == 2 and "9-way episodes need 9 classes" in too_many.stderr
    missing_snr = fsc(plugin_env, "bench", "--dataset", tiny_dataset.path, "--snr", "0.5", "--store", tmp_path / "z.sqlite")
    assert missing_snr.returncode == 2 and "has no SNR 0.5" in missing_snr.stderr
    no_dataset = fsc(plugin_env, "bench", "--dataset", "nowhere", "--store", tmp_path / "w.sqlite")
    assert no_dataset.returncode == 2 and "unknown data set 'nowhere'" in no_dataset.stderr and "synthetic" in no_dataset.stderr
    bad_param = fsc(plugin_env, "bench", "--methods", "xcorr", "--param", "xcorr.speed=3", "--store", tmp_path / "v.sqlite")
    assert bad_param.returncode == 2 and "does not accept speed" in bad_param.stderr
