"""The leaderboard regeneration driver: it covers every committed page, runs the commands the
pages document, and resumes (finished steps skipped, time of every attempt counted)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("regenerate_leaderboards", ROOT / "benchmarks" / "regenerate_leaderboards.py")
regenerate = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = regenerate
spec.loader.exec_module(regenerate)

#: Options that change only how a run is carried out, not what it computes.
HOW_NOT_WHAT = re.compile(r"\s--resume\b|\s--workers\s+\d+|\s--device\s+\w+")


def normalised(text: str) -> str:
    text = text.replace("\\\n", " ")
    return " ".join(HOW_NOT_WHAT.sub(" ", text).split())


def test_every_committed_leaderboard_page_is_made_by_a_step():
    made = {out for step in regenerate.STEPS for out in regenerate.outputs(step)}
    committed = {f"leaderboards/{p.name}" for p in (ROOT / "leaderboards").iterdir()
                 if p.is_dir() or p.suffix == ".md"}
    assert committed <= made, f"pages no step regenerates: {sorted(committed - made)}"


@pytest.mark.parametrize("step", [s for s in regenerate.STEPS if s.page], ids=lambda s: s.name)
def test_each_page_documents_exactly_its_steps_commands(step):
    page = normalised((ROOT / step.page).read_text())
    for command in step.commands:
        assert normalised(command) in page, f"{step.page} does not show `{command}`"


def test_steps_resume_skip_what_finished_and_count_every_attempt(tmp_path):
    times = tmp_path / "times.json"
    marker = tmp_path / "second-ran"
    ok = regenerate.Step("first", (f'"{sys.executable}" -c "print(1)"',))
    failing = regenerate.Step("second", (f'"{sys.executable}" -c "import sys; sys.exit(3)"',))
    with pytest.raises(SystemExit, match="second: .* exited with status 3"):
        regenerate.run_steps([ok, failing], times, root=tmp_path)
    log = json.loads(times.read_text())
    assert log["steps"]["first"]["finished"] and log["steps"]["second"]["finished"] is None
    failed_seconds = log["steps"]["second"]["seconds"]
    assert failed_seconds > 0

    fixed = regenerate.Step("second", (f'"{sys.executable}" -c "open(\'{marker.name}\', \'w\')"',))
    first_seconds = log["steps"]["first"]["seconds"]
    log = regenerate.run_steps([ok, fixed], times, root=tmp_path)
    assert marker.exists()
    assert log["steps"]["first"]["seconds"] == first_seconds  # skipped, not rerun
    assert log["steps"]["second"]["finished"] and log["steps"]["second"]["seconds"] > failed_seconds


def test_a_running_command_is_counted_while_it_runs(tmp_path):
    """A driver killed without warning (SIGKILL) still leaves the time spent so far in the log."""
    entry = {"seconds": 5.0}
    saved = []
    status = regenerate.run_counted(f'"{sys.executable}" -c "import time; time.sleep(1.0)"', tmp_path, entry,
                                    lambda: saved.append(entry["seconds"]), every=0.2)
    assert status == 0
    assert len(saved) >= 3, "the log was written only at the end"
    assert saved == sorted(saved) and saved[0] > 5.0  # added to the earlier attempts, growing
    assert saved[-1] == entry["seconds"] and entry["seconds"] >= 6.0


def test_a_step_whose_output_predates_the_log_is_skipped_uncounted(tmp_path):
    (tmp_path / "made").mkdir()
    step = regenerate.Step("simulate", (f'"{sys.executable}" -c "import sys; sys.exit(1)"',), creates="made")
    log = regenerate.run_steps([step], tmp_path / "times.json", root=tmp_path)
    assert log["steps"]["simulate"]["seconds"] == 0 and log["steps"]["simulate"]["finished"]


def test_only_adds_the_steps_needed_and_refuses_unknown_names():
    assert [s.name for s in regenerate.plan(["budgets"])] == ["simulate-shared", "budgets"]
    with pytest.raises(SystemExit, match="--only nope: no such step"):
        regenerate.plan(["nope"])


def test_workers_go_to_the_commands_that_split_work():
    assert regenerate.with_workers("fsc bench --seeds 0", 2) == "fsc bench --seeds 0 --workers 2"
    assert regenerate.with_workers("fsc leaderboard", 2) == "fsc leaderboard"
    assert regenerate.with_workers("python benchmarks/robustness.py --seeds 0", 2).endswith("--workers 2")
    assert regenerate.with_workers("fsc bench --seeds 0", 1) == "fsc bench --seeds 0"


def test_the_device_goes_to_each_bench_and_into_the_log(tmp_path):
    assert regenerate.with_device("fsc bench --seeds 0", "cuda") == "fsc bench --seeds 0 --device cuda"
    assert regenerate.with_device("fsc bench --seeds 0", "auto") == "fsc bench --seeds 0"
    assert regenerate.with_device("fsc leaderboard", "cuda") == "fsc leaderboard"
    times = tmp_path / "times.json"
    log = regenerate.run_steps([regenerate.Step("synthetic", (f'"{sys.executable}" -c "print(1)"',))], times,
                               root=tmp_path, device="cpu")  # named as a real step, so the summary shows it
    assert log["steps"]["synthetic"]["device"].startswith("cpu: ") and "| cpu: " in regenerate.summary(log)


def test_a_log_of_another_device_or_a_missing_gpu_is_refused(tmp_path):
    import torch

    times = tmp_path / "times.json"
    times.write_text(json.dumps({"steps": {"paper": {"seconds": 60.0, "finished": None, "device": "cuda: H200"}}}))
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusals below are for one without")
    with pytest.raises(SystemExit, match="its steps ran on cuda; .* fresh clone"):
        regenerate.run_steps([], times, root=tmp_path, device="cpu")
    with pytest.raises(SystemExit, match="--device cuda: no CUDA GPU"):
        regenerate.run_steps([], times, root=tmp_path, device="cuda")
