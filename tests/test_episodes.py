"""Episodes: deterministic, class-disjoint, validated, and read correctly from disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshot_cryoet import FscError
from fewshot_cryoet.episodes import EpisodeSet, EpisodeSpec, load_episode, sample_episodes


def test_episodes_are_deterministic_prefix_stable_and_seed_dependent(paired_dataset):
    spec = EpisodeSpec("test", n_way=2, k_shot=1, q_query=3, seed=7)
    a = sample_episodes(paired_dataset, spec, 20)
    b = sample_episodes(paired_dataset, spec, 30)
    assert np.array_equal(a.indices, b.indices[:20]) and (a.class_names == b.class_names[:20]).all()
    other = sample_episodes(paired_dataset, EpisodeSpec("test", 2, 1, 3, seed=8), 20)
    assert not np.array_equal(a.indices, other.indices)


def test_episodes_stay_inside_their_split_without_repeats(paired_dataset):
    particles = paired_dataset.particles
    for split in ("train", "val", "test"):
        classes = paired_dataset.splits[split]
        if len(classes) < 2:
            continue
        episodes = sample_episodes(paired_dataset, EpisodeSpec(split, 2, 2, 2), 15)
        for names, block in zip(episodes.class_names, episodes.indices):
            assert len(set(names)) == 2 and set(names) <= set(classes)
            assert len(set(block.ravel())) == block.size  # no particle twice in an episode
            for name, row in zip(names, block):
                assert (particles.loc[row, "class"] == name).all()


def test_episode_tensors_match_the_data_set(paired_dataset):
    episodes = sample_episodes(paired_dataset, EpisodeSpec("test", 2, 1, 3, seed=1), 3)
    episode = load_episode(paired_dataset, episodes, 2, "0.5")
    assert episode.support.shape == (2, 1, 32, 32, 32) and episode.query.shape == (6, 1, 32, 32, 32)
    assert episode.support.dtype == torch.float32 and episode.query_masks.dtype == torch.uint8
    assert episode.support_labels.tolist() == [0, 1] and episode.query_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert episode.n_way == 2 and episode.k_shot == 1 and episode.snr == 0.5 and episode.voxel_size == 10.0
    volumes = paired_dataset.volumes(0.5)
    first_query = episodes.indices[2, 0, 1]
    assert np.array_equal(episode.query[0, 0].numpy(), volumes[first_query])
    assert np.array_equal(episode.query_masks[0, 0].numpy(), paired_dataset.masks[first_query])
    assert episode.classes == tuple(episodes.class_names[2])


def test_episode_sets_round_trip_through_a_file(paired_dataset, tmp_path):
    episodes = sample_episodes(paired_dataset, EpisodeSpec("test", 3, 1, 2, seed=4), 5)
    episodes.save(tmp_path / "episodes.npz")
    again = EpisodeSet.load(tmp_path / "episodes.npz")
    assert again.spec == episodes.spec and np.array_equal(again.indices, episodes.indices)
    assert (again.class_names == episodes.class_names).all()


def test_impossible_episodes_are_refused_before_any_work(paired_dataset):
    n_test = len(paired_dataset.splits["test"])
    with pytest.raises(FscError, match=rf"{n_test + 1}-way episodes need {n_test + 1} classes but the test split"):
        sample_episodes(paired_dataset, EpisodeSpec("test", n_test + 1), 1)
    with pytest.raises(FscError, match=r"need 9 subtomograms per class.*has 8"):
        sample_episodes(paired_dataset, EpisodeSpec("test", 2, k_shot=4, q_query=5), 1)
    with pytest.raises(FscError, match="no split"):
        sample_episodes(paired_dataset, EpisodeSpec("holdout", 2), 1)
    with pytest.raises(FscError, match="N-way must be"):
        EpisodeSpec("test", 1)
