"""Templates from maps and atomic models, and the bad files users will feed them."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from scipy import ndimage

from fewshot_cryoet import FscError
from fewshot_cryoet.datasets.mrc_io import read_volume, write_volume
from fewshot_cryoet.datasets.synthetic import synthetic_template
from fewshot_cryoet.datasets.templates import (
    find_template_files,
    load_template,
    template_from_atomic_model,
    template_from_map,
)


def _pad_to(volume: np.ndarray, size: int) -> np.ndarray:
    pad = (size - volume.shape[0]) // 2
    return np.pad(volume, pad)


MODELS_WITH_MAPS = ["1bxn", "1qvr", "1s3x", "1u6g", "2cg9", "3cf3", "3d2f", "3gl1", "3h84", "3qm1", "4v4r_30S"]


@pytest.mark.parametrize("name", MODELS_WITH_MAPS)
def test_atomic_model_density_matches_shared_map(shared_data, name):
    """Density from the PDB model (gemmi, electron scattering factors, 30 Å like the shared
    maps) against the shared map of the same complex, both centred on their centre of mass."""
    from_model = template_from_atomic_model(shared_data / "pdb" / f"{name}.pdb", 10.0, resolution=30.0)
    from_map = template_from_map(shared_data / "templates" / f"{name}.mrc", 10.0)
    size = max(from_model.size, from_map.size)
    a, b = _pad_to(from_model.density, size), _pad_to(from_map.density, size)
    correlation = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    print(f"{name} model-vs-map correlation: {correlation:.4f}")
    assert correlation > 0.99
    assert abs(from_model.extent_angstrom - from_map.extent_angstrom) < 25


def test_atomic_model_default_resolution_and_mrc_round_trip(shared_data, tmp_path):
    template = load_template(shared_data / "pdb" / "3qm1.pdb", 10.0)
    assert template.density.dtype == np.float32 and template.density.max() == pytest.approx(1.0)
    template.save(tmp_path / "3qm1.mrc")
    again = load_template(tmp_path / "3qm1.mrc", 10.0)
    assert again.size == template.size  # re-centring an already centred map moves < 0.01 voxel
    assert np.corrcoef(again.density.ravel(), template.density.ravel())[0, 1] > 0.999


def test_templates_are_centred_on_mass_and_normalised(shared_data):
    for path in sorted((shared_data / "templates").glob("*.mrc"))[:6]:
        t = load_template(path, 10.0)
        com = np.asarray(ndimage.center_of_mass(t.density))
        assert np.abs(com - (t.size - 1) / 2).max() < 0.2, path.name
        assert t.density.min() >= 0 and t.density.max() == pytest.approx(1.0)
        assert t.extent_angstrom > 50


def test_resampling_keeps_physical_size(shared_data):
    at10 = load_template(shared_data / "templates" / "3cf3.mrc", 10.0)
    at5 = load_template(shared_data / "templates" / "3cf3.mrc", 5.0)
    at20 = load_template(shared_data / "templates" / "3cf3.mrc", 20.0)
    assert at5.extent_angstrom == pytest.approx(at10.extent_angstrom, rel=0.12)
    assert at20.extent_angstrom == pytest.approx(at10.extent_angstrom, rel=0.2)
    assert at5.size > at10.size > at20.size


def test_voxel_size_override_and_zero_header(tmp_path):
    volume = np.zeros((16, 16, 16), np.float32)
    volume[6:10, 6:10, 6:10] = 1
    path = tmp_path / "zero.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(volume)
        mrc.voxel_size = 0.0
    with pytest.raises(FscError, match=r"zero\.mrc.*voxel size is 0.*template_voxel_size") as info:
        read_volume(path)  # the library names its setting; the command line, its option
    from fewshot_cryoet.cli.terminal import error_text

    assert "give the real one with --template-voxel-size" in error_text(info.value)
    data, voxel = read_volume(path, voxel_size=7.5)
    assert voxel == 7.5 and data.shape == (16, 16, 16)


def test_axis_order_is_normalised_to_zyx(tmp_path):
    zyx = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    path = tmp_path / "swapped.mrc"
    # Store with columns = z, rows = y, sections = x: the file array is (x, y, z).
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.ascontiguousarray(zyx.transpose(2, 1, 0)))
        mrc.header.mapc, mrc.header.mapr, mrc.header.maps = 3, 2, 1
        mrc.voxel_size = 10.0
    data, _ = read_volume(path)
    assert np.array_equal(data, zyx)


@pytest.mark.parametrize(
    "case, message",
    [
        ("truncated", "truncated or damaged"),
        ("garbage", "not a readable MRC file"),
        ("flat", "expected a 3D volume"),
        ("nan", "NaN or infinite"),
        ("zeros", "every voxel is zero"),
    ],
)
def test_bad_maps_fail_with_one_line_naming_the_file(tmp_path, case, message):
    path = tmp_path / f"{case}.mrc"
    good = np.ones((8, 8, 8), np.float32)
    if case == "truncated":
        write_volume(path, good, 10.0)
        path.write_bytes(path.read_bytes()[:-100])
    elif case == "garbage":
        path.write_bytes(b"this is not an MRC file" * 100)
    elif case == "flat":
        with mrcfile.new(path) as mrc:
            mrc.set_data(np.ones((8, 8), np.float32))
            mrc.voxel_size = 10.0
    elif case == "nan":
        bad = good.copy()
        bad[1, 2, 3] = np.nan
        write_volume(path, bad, 10.0)
    else:
        write_volume(path, np.zeros_like(good), 10.0)
    with pytest.raises(FscError) as info:
        load_template(path, 10.0)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text


def test_unknown_suffix_missing_file_and_duplicate_names(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FscError, match="unknown template type"):
        load_template(tmp_path / "notes.txt", 10.0)
    with pytest.raises(FscError, match="no such file"):
        find_template_files([tmp_path / "absent.mrc"])
    t = synthetic_template(1)
    t.save(tmp_path / "a.mrc")
    (tmp_path / "sub").mkdir()
    t.save(tmp_path / "sub" / "a.mrc")
    with pytest.raises(FscError, match="share the class name"):
        find_template_files([tmp_path / "a.mrc", tmp_path / "sub"])


def test_synthetic_classes_are_fixed_by_seed_and_distinct():
    a, b, c = synthetic_template(5), synthetic_template(5), synthetic_template(6)
    assert np.array_equal(a.density, b.density)
    assert a.name == "syn005" and "seed=5" in a.source
    size = max(a.size, c.size)
    pa, pc = _pad_to(a.density, size), _pad_to(c.density, size)
    assert np.corrcoef(pa.ravel(), pc.ravel())[0, 1] < 0.9


def test_synthetic_sizes_span_small_to_large_complexes():
    extents = [synthetic_template(s).extent_angstrom for s in range(22)]
    assert min(extents) < 90 and max(extents) > 200
    assert all(50 < e < 320 for e in extents)


def test_synthetic_classes_render_the_same_shape_at_other_voxel_sizes():
    coarse, fine = synthetic_template(3, voxel_size=10.0), synthetic_template(3, voxel_size=5.0, resolution=20.0)
    assert fine.extent_angstrom == pytest.approx(coarse.extent_angstrom, rel=0.1)
