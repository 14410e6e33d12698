"""Training sets that mix class sources: maps, atomic models and synthetic:N built-in classes
(class diversity), and the name clashes a mixed list can bring."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from fewshot_cryoet import FscError, api
from fewshot_cryoet.cli.main import main
from fewshot_cryoet.datasets.class_sources import class_sources
from fewshot_cryoet.datasets.simulate import SimulationConfig
from fewshot_cryoet.datasets.synthetic import synthetic_template


@pytest.fixture
def maps(tmp_path):
    folder = tmp_path / "maps"
    folder.mkdir()
    for seed, name in ((40, "alpha"), (41, "beta")):
        synthetic_template(seed, 20.0).save(folder / f"{name}.mrc")
    return folder


def test_synthetic_classes_mix_with_maps_in_the_order_given(maps):
    sources = class_sources(["synthetic:3", maps], synthetic_seed=5)
    assert len(sources) == 5 and sources.synthetic == 3 and [f.name for f in sources.files] == ["alpha.mrc", "beta.mrc"]
    loaded = sources.load(20.0)
    assert [t.name for t in loaded] == ["syn005", "syn006", "syn007", "alpha", "beta"]
    assert np.array_equal(loaded[0].density, synthetic_template(5, 20.0).density)
    # the cache key covers the synthetic count and seed as well as the files
    assert sources.key() != class_sources(["synthetic:4", maps], synthetic_seed=5).key()
    assert sources.key() != class_sources(["synthetic:3", maps], synthetic_seed=6).key()
    assert sources.key() == class_sources(["synthetic:3", maps], synthetic_seed=5).key()


def test_one_class_name_names_one_map(maps, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "alpha.mrc").write_bytes((maps / "alpha.mrc").read_bytes())
    assert len(class_sources([maps, copy])) == 2  # the same map twice is one class
    other = tmp_path / "other"
    other.mkdir()
    synthetic_template(9, 20.0).save(other / "alpha.mrc")
    with pytest.raises(FscError) as info:
        class_sources([maps, other])
    text = str(info.value)
    assert "class alpha comes from two different maps" in text
    assert str(maps / "alpha.mrc") in text and str(other / "alpha.mrc") in text and "\n" not in text
    synthetic_template(1, 20.0).save(other / "syn001.mrc")
    with pytest.raises(FscError, match=r"class syn001 comes from two different maps, synthetic:2 and .*syn001.mrc"):
        class_sources(["synthetic:2", other / "syn001.mrc"])


@pytest.mark.parametrize("entries, message", [
    (["synthetic:0"], "write synthetic:N with N from 1 to 10,000"),
    (["synthetic:many"], "'synthetic:many'"),
    (["synthetic:2", "synthetic:3"], "synthetic:N is given twice"),
])
def test_bad_synthetic_entries_are_refused_by_name(entries, message):
    with pytest.raises(FscError, match=message):
        class_sources(entries)


def test_fsc_simulate_makes_one_data_set_of_mixed_sources(maps, tmp_path):
    out = tmp_path / "mixed"
    result = CliRunner().invoke(main, ["simulate", "--templates", "synthetic:4", str(maps), "--out", str(out),
                                          "--per-class", "2", "--box", "16", "--voxel-size", "20", "--route", "fourier",
                                          "--test-classes", "alpha,beta"])
    assert result.exit_code == 0, result.output
    data = api.open_dataset(out)
    assert sorted(data.classes) == ["alpha", "beta", "syn000", "syn001", "syn002", "syn003"]
    assert sorted(data.splits["test"]) == ["alpha", "beta"]
    # a test set of the maps alone shares no trained class with the mixed set: a fair cross-domain pair
    test = api.simulate(tmp_path / "maps-only", templates=[maps], per_class=2, snrs=[1000], test_classes=["alpha", "beta"],
                        config=SimulationConfig(box=16, voxel_size=20.0, route="fourier"))
    from fewshot_cryoet.evaluation.fitting import check_domains

    check_domains(data, test)


def test_fsc_train_defaults_to_many_synthetic_classes(tmp_path, monkeypatch):
    """Without --dataset or --templates, fsc train trains on the registered many-class set: 512
    synthetic classes of 20 subtomograms, the last 32 validating and the 32 before them a test
    split (shown here on a 70-class instance of the same recipe, simulated for real)."""
    from fewshot_cryoet import api
    from fewshot_cryoet.datasets.providers import MANY_CLASSES_HELD_OUT, many_classes_provider
    from fewshot_cryoet.plugins import get_plugins

    default = get_plugins().datasets.get(api.DEFAULT_TRAINING_DATASET)
    assert default.name == "synthetic-512" and default.per_class == 20
    assert len(default.explicit_splits["val"]) == len(default.explicit_splits["test"]) == MANY_CLASSES_HELD_OUT
    assert default.explicit_splits["val"][-1] == "syn511"
    monkeypatch.setenv("FSC_CACHE_DIR", str(tmp_path))
    small = many_classes_provider(classes=70, per_class=1).dataset(1000.0)
    assert small.splits["train"] == [f"syn{i:03d}" for i in range(6)]
    assert small.splits["test"] == [f"syn{i:03d}" for i in range(6, 38)]
    assert small.splits["val"] == [f"syn{i:03d}" for i in range(38, 70)] and len(small) == 70
