"""Before anything is called "tuned better": the best trial against the defaults, each retrained
with several seeds and scored on fresh validation-class episodes, compared pairwise.

A study picks the best of many trials on the same validation episodes, so its best value is
flattered twice: by the choice among trials, and by one lucky training. The confirmation retrains
both configurations once per seed (the same seeds, so both see the same training episodes),
scores them on validation-class episodes no trial was scored on, and only then gives a verdict:
the mean per-episode difference with a two-level bootstrap interval (seeds, then episodes, as the
leaderboard's cells) and a Wilcoxon signed-rank test on the seed-averaged per-episode differences.
"tuned better" needs both: p < 0.05 and an interval above zero. The test split is never read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fewshot_cryoet.core.reporting import Reporter, as_reporter

if TYPE_CHECKING:
    import torch

    from fewshot_cryoet.core.types import Budget
    from fewshot_cryoet.datasets.dataset import SubtomogramDataset
    from fewshot_cryoet.methods.base import FewShotMethod
    from fewshot_cryoet.tuning.study import TuneSettings

#: Added to the study's seed to draw the confirmation episodes: neither the trials' objective
#: episodes (seed + 2) nor the model-selection episodes (seed + 1).
FRESH_EPISODE_OFFSET = 1_000_003


@dataclass
class Confirmation:
    """The outcome, stored with the study (``confirmation`` user attribute) and in exported
    params files."""

    seeds: list[int]
    episodes: int
    tuned_params: dict[str, Any]
    tuned_accuracy: float
    default_accuracy: float
    per_seed: list[dict[str, float]]
    mean_difference: float
    ci95: float
    p_value: float
    verdict: str

    def describe(self) -> str:
        return (f"confirmation on {self.episodes} fresh validation episodes, {len(self.seeds)} training seed(s): "
                f"tuned {self.tuned_accuracy:.3f} vs defaults {self.default_accuracy:.3f}, difference "
                f"{self.mean_difference:+.3f} ± {self.ci95:.3f} (p = {self.p_value:.3g}): {self.verdict}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confirm(cls: type[FewShotMethod], settings: TuneSettings, dataset: SubtomogramDataset,
            tuned_params: dict[str, Any], budget: Budget, device: torch.device, seeds: list[int], episodes: int,
            reporter: Reporter | None = None) -> Confirmation:
    """Retrain and score the tuned and the default configuration per seed; see the module."""
    from fewshot_cryoet.episodes import EpisodeSpec, load_episode, sample_episodes
    from fewshot_cryoet.evaluation.fitting import fit_context
    from fewshot_cryoet.evaluation.metrics import paired_comparison, seeds_and_episodes_ci
    from fewshot_cryoet.tuning.objective import score_episodes

    reporter = as_reporter(reporter)
    seeds = list(seeds) if cls.trainable else [settings.seed]  # a training-free method has nothing to reseed
    spec = EpisodeSpec("val", settings.ways, settings.shots, settings.queries, settings.seed + FRESH_EPISODE_OFFSET)
    episode_set = sample_episodes(dataset, spec, episodes)
    loaded = [load_episode(dataset, episode_set, i, settings.snr) for i in range(len(episode_set))]
    configurations = {"tuned": {**settings.fixed_params, **tuned_params}, "defaults": dict(settings.fixed_params)}
    scores: dict[str, dict[int, list[float]]] = {name: {} for name in configurations}
    task = reporter.task(f"confirm {cls.name}/{settings.variant}", total=len(seeds) * 2)
    for seed in seeds:
        for name, params in configurations.items():
            method = cls(params, settings.variant, device)
            if method.trainable:
                method.fit(fit_context(dataset, settings.snr, method.segments, budget, device, settings.queries, seed,
                                       settings.shots))
            scores[name][seed] = score_episodes(method, loaded, reporter)[0]
            task.advance()
    tuned = pd.DataFrame(scores["tuned"])  # episodes × seeds
    defaults = pd.DataFrame(scores["defaults"])
    difference = (tuned - defaults).stack().rename("accuracy").rename_axis(["episode", "train_seed"]).reset_index()
    mean, ci, _ = seeds_and_episodes_ci(difference)
    paired = paired_comparison(tuned.mean(axis=1), defaults.mean(axis=1))
    if paired.significant and mean - ci > 0:
        verdict = "tuned better"
    elif paired.significant and mean + ci < 0:
        verdict = "defaults better"
    else:
        verdict = "no detectable difference"
    return Confirmation(
        seeds=seeds, episodes=len(loaded), tuned_params=dict(tuned_params),
        tuned_accuracy=float(tuned.to_numpy().mean()), default_accuracy=float(defaults.to_numpy().mean()),
        per_seed=[{"seed": s, "tuned": float(np.mean(scores["tuned"][s])),
                   "defaults": float(np.mean(scores["defaults"][s]))} for s in seeds],
        mean_difference=mean, ci95=0.0 if np.isnan(ci) else ci, p_value=paired.p_value, verdict=verdict,
    )
