"""The paper-comparison page's cost section: what the Table-1 run costs is measured from the store,
and the part not yet trained is projected from finished models of the same kind."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("paper_comparison", ROOT / "benchmarks" / "paper_comparison.py")
paper_comparison = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = paper_comparison
spec.loader.exec_module(paper_comparison)


FULL = 4 * 600  # test episodes of a fully scored model: 600 per N, N = 2, 4, 6, 8
KINDS = ("SCNN w/o decoder", "SCNN w decoder", "DuSE-SCNN w/o decoder", "DuSE-SCNN w decoder")


def trained(*models: tuple[str, str, float, int, float]) -> pd.DataFrame:
    """Episode rows of models trained for 150 episodes: (variant, SNR, training seconds, test
    episodes scored, prediction seconds per episode) each."""
    columns = ["label", "snr", "seed", "train_seed", "episode", "fit_episodes", "fit_seconds", "predict_seconds",
               "params"]
    return pd.DataFrame([{"label": f"COS-Net {variant} (paper)", "snr": snr, "seed": 0, "train_seed": 0, "episode": e,
                          "fit_episodes": 150.0, "fit_seconds": seconds, "predict_seconds": per_episode,
                          "params": "{}"}
                         for variant, snr, seconds, scored, per_episode in models for e in range(scored)],
                        columns=columns)


def test_the_rest_of_the_run_is_projected_from_finished_models_of_their_kind():
    rows = trained(("SCNN w/o decoder", "inf", 1800.0, FULL, 0.25), ("SCNN w decoder", "inf", 3600.0, FULL, 0.75),
                   ("DuSE-SCNN w/o decoder", "inf", 2000.0, 100, 1.0))
    text = "\n".join(paper_comparison.cost_lines(rows))
    assert "3 of 12 models trained, 2.1 h of training and 0.7 h of scoring" in text
    assert "| COS-Net SCNN w decoder (paper) | inf | 150 | 60 min | 24.0 s | 2,400 of 2,400 | 30 min |" in text
    assert "| 100 of 2,400 |" in text
    # Without decoder: 3800 s trained + 4 × 1800 s, scoring 600 s + 5 × 600 s; with one: 6 × 3600 s + 6 × 1800 s.
    # 47,000 s of process time in all, 6.5 h on two workers.
    assert "all 12 is projected at" in text and "13.1 h of process time, about 6.5 h of wall time" in text
    assert "within a working day" in text


def test_a_finished_run_states_its_measured_cost_and_whether_it_fits_a_working_day():
    rows = trained(*[(variant, snr, 3 * 3600.0, FULL, 1.5) for variant in KINDS for snr in ("inf", "1000", "0.5")])
    text = "\n".join(paper_comparison.cost_lines(rows))
    assert "12 of 12 models trained, 36.0 h of training and 12.0 h of scoring" in text and "projected" not in text
    assert "all 12 took 48.0 h of process time, about 24.0 h of wall time on 2 cores (CRF not counted): beyond" in text


def test_no_projection_before_a_model_of_each_kind_is_fully_scored():
    text = "\n".join(paper_comparison.cost_lines(trained(("SCNN w/o decoder", "inf", 1800.0, FULL, 0.25))))
    assert "1 of 12 models trained" in text and "waits for one fully scored model with and one without" in text
    assert "working day (8 h)" not in text


def test_nothing_is_claimed_before_any_model_is_trained():
    text = "\n".join(paper_comparison.cost_lines(trained()))
    assert "No model is trained yet" in text and "working day (8 h)" not in text
    assert all(command in text for command in paper_comparison.RUN_COMMANDS)
