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


def trained(*models: tuple[str, str, float]) -> pd.DataFrame:
    """Episode rows (two per model, as a store holds many) of models trained for 150 episodes."""
    return pd.DataFrame([{"label": label, "snr": snr, "seed": 0, "train_seed": 0, "fit_episodes": 150.0,
                          "fit_seconds": seconds, "params": "{}"}
                         for label, snr, seconds in models for _ in range(2)],
                        columns=["label", "snr", "seed", "train_seed", "fit_episodes", "fit_seconds", "params"])


def test_untrained_models_are_projected_from_finished_ones_of_their_kind():
    rows = trained(("COS-Net SCNN w/o decoder (paper)", "inf", 1800.0),
                   ("COS-Net SCNN w decoder (paper)", "inf", 3600.0))
    text = "\n".join(paper_comparison.cost_lines(rows))
    assert "2 of 12 models trained, 1.5 h of training process time" in text
    # 6 models of each kind: 6 × 0.5 h + 6 × 1 h = 9.0 h of process time, 4.5 h on two workers.
    assert "Training all 12 is projected" in text and "at 9.0 h of process time, about 4.5 h of wall time" in text
    assert "within a working day" in text
    assert "| COS-Net SCNN w decoder (paper) | inf | 150 | 60 min | 24.0 s |" in text


def test_a_finished_run_states_its_measured_cost_and_whether_it_fits_a_working_day():
    labels = [f"COS-Net {v} (paper)" for v in ("SCNN w/o decoder", "SCNN w decoder", "DuSE-SCNN w/o decoder",
                                                "DuSE-SCNN w decoder")]
    rows = trained(*[(label, snr, 3 * 3600.0) for label in labels for snr in ("inf", "1000", "0.5")])
    text = "\n".join(paper_comparison.cost_lines(rows))
    assert "12 of 12 models trained, 36.0 h" in text and "projected" not in text
    assert "Training all 12 is 36.0 h of process time, about 18.0 h of wall time on 2 cores: beyond a working day" \
        in text


def test_nothing_is_claimed_before_any_model_is_trained():
    text = "\n".join(paper_comparison.cost_lines(trained()))
    assert "No model is trained yet" in text and "working day (8 h)" not in text
    assert all(command in text for command in paper_comparison.RUN_COMMANDS)
