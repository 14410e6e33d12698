"""fsc combine: several data set folders become one; every difference that would make the result
wrong (grid, SNR levels, a name for two complexes, a class in two splits) is refused naming both."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from click.testing import CliRunner

from fewshot_cryoet import FscError, api
from fewshot_cryoet.cli import main
from fewshot_cryoet.episodes import EpisodeSpec, sample_episodes


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two small simulated sets of different synthetic classes; the first has one more SNR level."""
    root = tmp_path_factory.mktemp("combine")
    first = api.simulate(root / "a", templates=["synthetic:4"], snrs=[1000.0, 0.5], per_class=6, seed=1)
    second = api.simulate(root / "b", templates=["synthetic:4"], synthetic_seed=10, snrs=[0.5], per_class=5, seed=2)
    return root, first, second


def test_particles_volumes_masks_and_splits_are_kept(folders):
    root, first, second = folders
    logged = []
    from fewshot_cryoet.core.reporting import CallbackReporter

    combined = api.combine([first.path, second.path], root / "c", reporter=CallbackReporter(on_log=logged.append))
    assert combined.snr_labels == ["0.5"] and any("SNR 1000: not in every folder" in line for line in logged)
    assert len(combined) == len(first) + len(second) == 44
    assert np.array_equal(combined.volumes(0.5)[:24], first.volumes(0.5))
    assert np.array_equal(combined.volumes(0.5)[24:], second.volumes(0.5))
    assert np.array_equal(combined.masks[24:], second.masks)
    for split in ("train", "val", "test"):
        assert combined.splits[split] == first.splits[split] + second.splits[split]
    particles = combined.particles
    assert particles["source"].tolist() == [0] * 24 + [1] * 20
    assert particles["source_particle"].tolist() == list(range(24)) + list(range(20))
    assert (particles["class_index"] == particles["class"].map({c: i for i, c in enumerate(combined.classes)})).all()
    combined.check()
    episodes = sample_episodes(combined, EpisodeSpec("test", 4, 1, 2, seed=0), 5)  # classes of both folders
    assert {str(c) for c in np.unique(episodes.class_names)} == set(combined.splits["test"])
    # the hash is the combination's: the same folders give it again, and it is neither folder's
    again = api.combine([first.path, second.path], root / "c-again")
    assert again.content_hash == combined.content_hash not in (first.content_hash, second.content_hash)
    other_order = api.combine([second.path, first.path], root / "c-swapped")
    assert other_order.content_hash != combined.content_hash


def test_the_same_map_in_two_folders_is_one_class(folders, tmp_path):
    root, first, _ = folders
    more = api.simulate(tmp_path / "more", templates=["synthetic:4"], snrs=[0.5], per_class=3, seed=1)
    combined = api.combine([first.path, more.path], tmp_path / "c")
    assert combined.classes == first.classes  # the same four synthetic complexes
    assert len(combined) == 24 + 12 and len(combined.indices(class_name="syn000")) == 9


def _write_map(path, size: int = 24) -> None:
    z, y, x = np.mgrid[:size, :size, :size] - size / 2
    with mrcfile.new(path) as handle:
        handle.set_data(np.exp(-(x ** 2 + 2 * y ** 2 + z ** 2) / 20).astype(np.float32))
        handle.voxel_size = 10.0


def test_mismatches_are_refused_naming_both_folders(folders, tmp_path):
    root, first, second = folders
    cases = []
    boxed = api.simulate(tmp_path / "box24", templates=["synthetic:3"], synthetic_seed=20, snrs=[0.5], per_class=3,
                         config=api.simulation_config(box=24))
    cases.append(([first.path, boxed.path], r"box24 has 24³ boxes but .*/a has 32³"))
    voxels = api.simulate(tmp_path / "vox", templates=["synthetic:3"], synthetic_seed=30, snrs=[0.5], per_class=3,
                          config=api.simulation_config(voxel_size=12.0))
    cases.append(([first.path, voxels.path], r"vox has 12 Å voxels but .*/a has 10 Å"))
    noise_free = api.simulate(tmp_path / "inf", templates=["synthetic:3"], synthetic_seed=40, snrs=[float("inf")],
                              per_class=3)
    cases.append(([second.path, noise_free.path], r"/b \(SNR 0.5\) and .*/inf \(SNR inf\) share no SNR level"))
    maps = tmp_path / "maps"
    maps.mkdir()
    for name in ("syn000", "other1", "other2"):
        _write_map(maps / f"{name}.mrc")
    impostor = api.simulate(tmp_path / "impostor", templates=[maps], snrs=[0.5], per_class=3)
    cases.append(([first.path, impostor.path], r"class 'syn000' is in .*/a and in .*/impostor as different complexes"))
    resplit = api.simulate(tmp_path / "resplit", templates=["synthetic:4"], snrs=[0.5], per_class=3, seed=5,
                           test_classes=["syn001", "syn002"])
    cases.append(([first.path, resplit.path], r"class 'syn00\d' is a \w+ class in .*/a but a \w+ class in .*/resplit"))
    cases.append(([first.path, first.path], r"are the same data set; give it once"))
    cases.append(([first.path], r"at least two data set folders"))
    for given, message in cases:
        with pytest.raises(FscError, match=message):
            api.combine(given, tmp_path / "never")
        assert not (tmp_path / "never").exists()  # refused before anything was written


def test_the_command_line_combines_and_refuses_in_one_line(folders, tmp_path):
    root, first, second = folders
    made = CliRunner().invoke(main, ["combine", str(first.path), str(second.path), "--out", str(tmp_path / "c")])
    assert made.exit_code == 0, made.output
    assert "44 subtomograms" in made.output and "content hash" in made.output
    again = CliRunner().invoke(main, ["combine", str(first.path), str(second.path), "--out", str(tmp_path / "c")])
    assert again.exit_code == 2 and len(again.output.strip().splitlines()) == 1 and "--overwrite" in again.output
    missing = CliRunner().invoke(main, ["combine", str(first.path), str(tmp_path / "nowhere"), "--out",
                                        str(tmp_path / "d")])
    assert missing.exit_code == 2 and "nowhere" in missing.output


def test_one_named_level_per_folder(folders, tmp_path):
    """Imported particles (level ``recorded``) beside simulated ones: one level per folder, named
    ``recorded`` when they differ (the combined SNR is not one number), kept when they agree."""
    root, first, second = folders
    mixed = api.combine([first.path, second.path], tmp_path / "mixed", levels=["1000", "0.5"])
    assert mixed.snr_labels == ["recorded"] and len(mixed) == 44
    assert np.array_equal(mixed.volumes("recorded")[:24], first.volumes(1000.0))
    assert np.array_equal(mixed.volumes("recorded")[24:], second.volumes(0.5))
    assert set(mixed.labels["source_snr"].astype(float)) == {1000.0, 0.5}
    same = api.combine([first.path, second.path], tmp_path / "same", levels=["0.5", "0.5"])
    assert same.snr_labels == ["0.5"] and same.content_hash != mixed.content_hash
    assert np.isfinite(same.mask_snr(0.5))
    with pytest.raises(FscError, match=r"/b has no SNR 1000 \(it has 0.5\)"):
        api.combine([first.path, second.path], tmp_path / "never", levels=["0.5", "1000"])
    with pytest.raises(FscError, match="levels: 1 given for 2 folders; name one SNR level per folder"):
        api.combine([first.path, second.path], tmp_path / "never", levels=["0.5"])
