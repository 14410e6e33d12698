"""Conformance kit for method authors: run a tiny CPU episode through a method and check the
contract the runner relies on.

    from fewshot_cryoet.testing import check_method
    check_method(MyMethod)            # raises ConformanceError naming the failed check

It simulates a small data set with the suite's own simulator (synthetic classes, 16³ boxes),
fits every variant for two episodes, and checks scores, segmentation output, determinism,
save/load and that relabelling the classes of an episode permutes the scores accordingly.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.types import Budget
from fewshot_cryoet.datasets.build import simulate_dataset
from fewshot_cryoet.datasets.simulate import SimulationConfig
from fewshot_cryoet.datasets.synthetic import synthetic_templates
from fewshot_cryoet.episodes import EpisodeSource, EpisodeSpec, load_episode, sample_episodes
from fewshot_cryoet.evaluation.scoring import validator
from fewshot_cryoet.methods.base import FewShotMethod, FitContext, ScoreKind


class ConformanceError(AssertionError):
    """A method broke the contract; the message names the method, variant and check."""


def tiny_dataset(folder: str | Path, validation_classes: int = 1):
    """Six synthetic classes × 6 subtomograms, 16³ at 20 Å, noise-free and SNR 1 (Fourier route).
    Splits: 3 test, 1 validation, 2 training classes; or, with ``validation_classes=2`` (enough
    for validation episodes, as tuning needs), 2 test, 2 validation, 2 training classes."""
    config = SimulationConfig(box=16, voxel_size=20.0, route="fourier")
    templates = synthetic_templates(6, voxel_size=20.0)
    names = [t.name for t in templates]
    if validation_classes == 1:
        folder, splits = Path(folder) / "tiny", {"val": [names[4]], "test": names[:3]}
    elif validation_classes == 2:
        folder, splits = Path(folder) / "tiny-val2", {"val": names[2:4], "test": names[:2]}
    else:
        raise ValueError("validation_classes must be 1 or 2")
    return simulate_dataset(templates, folder, [float("inf"), 1.0], per_class=6, config=config, seed=0,
                            explicit_splits=splits)


def check_method(method_cls: type[FewShotMethod], params: dict | None = None) -> list[str]:
    """Run every check on every variant; return the names of the checks that passed."""
    passed: list[str] = []

    def require(condition: bool, variant: str, check: str, detail: str = "") -> None:
        if not condition:
            raise ConformanceError(f"method {method_cls.__name__} variant {variant}: {check} failed{': ' + detail if detail else ''}")
        passed.append(f"{variant}: {check}")

    require(isinstance(getattr(method_cls, "name", None), str) and bool(method_cls.name), "-", "has a name")
    require(bool(method_cls.description), "-", "has a one-line description", repr(method_cls.description))
    require(isinstance(method_cls.variants, dict) and bool(method_cls.variants), "-", "declares variants")
    try:
        method_cls.resolve({"__not_a_parameter__": 1})
        require(False, "-", "refuses unknown hyper-parameters")
    except FscError:
        passed.append("-: refuses unknown hyper-parameters")
    try:
        kind = ScoreKind(method_cls.score_kind)
    except ValueError:
        kind = None
    require(kind is not None, "-", "score_kind is a ScoreKind", repr(method_cls.score_kind))
    for variant in method_cls.variants:  # validation and labels need nothing built
        resolved_variant, resolved = method_cls.resolve(params, variant)
        label = method_cls.label_for(resolved_variant, resolved)
        require(isinstance(label, str) and bool(label), variant, "label_for gives a label without building", repr(label))
        require(all(key in resolved for key in method_cls.crf_hyperparameters), variant,
                "crf_hyperparameters name declared hyper-parameters")

    with tempfile.TemporaryDirectory() as tmp:
        dataset = tiny_dataset(tmp)
        episodes = sample_episodes(dataset, EpisodeSpec("test", 3, 1, 2, seed=0), 2)
        validation = [load_episode(dataset, sample_episodes(dataset, EpisodeSpec("train", 2, 1, 2), 1), 0, 1.0)]
        for variant in method_cls.variants:
            before = torch.random.get_rng_state()
            method = method_cls(params, variant)
            require(torch.equal(before, torch.random.get_rng_state()), variant,
                    "constructing it leaves the global random state alone")
            require(method.label == method_cls.display_label(method.variant, method.params), variant,
                    "label equals display_label of its settings")
            train = EpisodeSource(dataset, "train", 1.0, with_masks=method.segments)
            context = FitContext(train, validator(validation), Budget(episodes=2), torch.device("cpu"), seed=0)
            report = method.fit(context)
            require(report is not None, variant, "fit returns a FitReport")
            episode = load_episode(dataset, episodes, 0, 1.0, with_masks=method.segments)
            first = method.predict(episode)
            n_query = len(episode.query_labels)
            require(tuple(first.scores.shape) == (n_query, episode.n_way), variant, "scores have shape (queries, N)",
                    str(tuple(first.scores.shape)))
            require(bool(torch.isfinite(first.scores).all()), variant, "scores are finite")
            if method.segments:
                p = first.probabilities
                require(p is not None and tuple(p.shape) == tuple(episode.query.shape), variant,
                        "probabilities have the queries' shape", None if p is None else str(tuple(p.shape)))
                require(bool(((p >= 0) & (p <= 1)).all()), variant, "probabilities lie in [0, 1]")
            again = method.predict(episode)
            require(torch.allclose(first.scores, again.scores, atol=1e-5), variant, "predict is deterministic")
            order = torch.tensor(list(reversed(range(episode.n_way))))
            relabelled = replace(
                episode, support_labels=order[episode.support_labels], query_labels=order[episode.query_labels],
                classes=tuple(reversed(episode.classes)))
            permuted = method.predict(relabelled)
            require(torch.allclose(permuted.scores, first.scores[:, order], atol=1e-4), variant,
                    "relabelling classes permutes the scores")
            checkpoint = Path(tmp) / f"{variant}.pt"
            method.save(checkpoint, dataset.box)
            restored = method_cls(params, variant)
            restored.load(checkpoint, dataset.box)
            require(torch.allclose(restored.predict(episode).scores, first.scores, atol=1e-5), variant,
                    "save and load keep the predictions")
    return passed
