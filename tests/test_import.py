"""Users' own data in the benchmark: fsc import of class folders, STAR tables, tomograms with
coordinates (RELION 4 and 5) and copick projects, checked against a simulated scene's truth."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import starfile

from fewshot_cryoet import api
from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.datasets.scene import SceneConfig

SCENE = SceneConfig(shape_xyz=(96, 96, 48), particles=24, snr=0.5, seed=1)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A small crowded tomogram of 4 synthetic classes, with its STAR files and copick project."""
    return api.simulate_scene(tmp_path_factory.mktemp("scene") / "scene", classes=4, config=SCENE)


def _tomogram_import(scene, star: str, out, **splits):
    return api.import_data(scene / star, out, tomograms=scene / "tomogram.mrc", class_map=scene / "classes.csv",
                           masks=scene / "labels.mrc", **splits)


def test_relion4_relion5_and_copick_imports_of_one_scene_agree_with_its_truth(scene, tmp_path):
    r5 = _tomogram_import(scene, "particles_relion5.star", tmp_path / "r5")
    r4 = _tomogram_import(scene, "particles_relion4.star", tmp_path / "r4")
    cp = api.import_data(scene / "copick.json", tmp_path / "cp")
    truth = starfile.read(scene / "particles_relion4.star")
    names = pd.read_csv(scene / "classes.csv").set_index("value")["name"]
    # every particle, with its class, in the STAR order
    assert len(r5) == len(r4) == len(cp) == SCENE.particles
    assert list(r4.particles["class"]) == [names[v] for v in truth["rlnClassNumber"]]
    # RELION 5 centred Å and RELION 4 voxels name the same boxes
    assert np.array_equal(r5.volumes("recorded"), r4.volumes("recorded"))
    assert np.array_equal(r5.masks, r4.masks) and r5.has_masks
    # copick (zarr tomogram, picks in Å, multilabel segmentation) gives the same boxes too
    order = cp.particles.sort_values(["source_x_A", "source_y_A"]).index.to_numpy()
    reference = (r4.particles.assign(x=r4.particles["source_x"]).sort_values(["x", "source_y"]).index.to_numpy())
    assert np.allclose(cp.volumes("recorded")[order], r4.volumes("recorded")[reference], atol=1e-4)
    assert np.array_equal(cp.masks[order], r4.masks[reference])
    # masks are the particle's own class label around the centre: most particles cover it
    assert r4.masks[:, 16, 16, 16].mean() > 0.7
    # padding counted where a box crosses the border, and recorded per particle
    near = ((truth[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy() < 17)
            | (truth[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
               > np.array(SCENE.shape_xyz) - 18)).any(axis=1)
    assert r4.manifest["padded_particles"] == int(r4.particles["padded"].sum()) == int(near.sum()) > 0
    # the same scene imported twice is the same data set; the link to the source is not in the hash
    again = _tomogram_import(scene, "particles_relion4.star", tmp_path / "elsewhere" / "r4")
    assert again.content_hash == r4.content_hash
    assert r4.manifest["source"]["content_hash"] and r4.manifest["source_path"].endswith("particles_relion4.star")


def test_csv_and_text_coordinates_give_the_boxes_of_the_star_file(scene, tmp_path):
    """CSV (x, y, z, tomogram, class) and IMOD/Dynamo-style text (x y z, one file per class)."""
    truth = starfile.read(scene / "particles_relion4.star")
    names = pd.read_csv(scene / "classes.csv").set_index("value")["name"]
    reference = _tomogram_import(scene, "particles_relion4.star", tmp_path / "star")
    csv = pd.DataFrame({"x": truth["rlnCoordinateX"], "y": truth["rlnCoordinateY"], "z": truth["rlnCoordinateZ"],
                        "tomogram": "tomogram", "class": [names[v] for v in truth["rlnClassNumber"]]})
    csv.to_csv(tmp_path / "picks.csv", index=False)
    from_csv = api.import_data(tmp_path / "picks.csv", tmp_path / "csv", tomograms=scene)
    assert np.array_equal(from_csv.volumes("recorded"), reference.volumes("recorded"))
    first = names[truth["rlnClassNumber"].iloc[0]]
    mine = truth[[names[v] == first for v in truth["rlnClassNumber"]]]
    np.savetxt(tmp_path / f"{first}.txt", mine[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy())
    from fewshot_cryoet.datasets.sources.base import SourceOptions, open_source

    source = open_source(tmp_path / f"{first}.txt", SourceOptions(tomograms=scene / "tomogram.mrc"))
    assert source.name == "tomograms" and {p.class_name for p in source.particles()} == {first}
    rows = np.flatnonzero([names[v] == first for v in truth["rlnClassNumber"]])
    assert np.array_equal(source.read(0).volume, _raw(scene, truth, rows[0]))


def _raw(scene, truth, row):
    """The box of STAR row ``row``, cut out directly (before the importer's normalisation)."""
    from fewshot_cryoet.datasets.sources.tomograms import Tomogram, cut_out

    tomogram = Tomogram(scene / "tomogram.mrc")
    centre = truth[["rlnCoordinateZ", "rlnCoordinateY", "rlnCoordinateX"]].to_numpy()[row]
    return cut_out(tomogram.data, tomogram.voxel_size, centre, 32, tomogram.voxel_size)[0]


def test_an_imported_data_set_runs_in_bench_and_the_leaderboard(scene, tmp_path):
    data = _tomogram_import(scene, "particles_relion5.star", tmp_path / "r5")
    frame = api.bench(["xcorr", "radial"], dataset=data, ways=[2], episodes=4, queries_per_class=1,
                      store=tmp_path / "r.sqlite", params={"xcorr": {"angular_step": 60}})
    assert set(frame["snr"]) == {"recorded"} and len(frame) == 8
    files = api.leaderboard(tmp_path / "r.sqlite", tmp_path / "boards")
    markdown = (tmp_path / "boards" / "leaderboard.md").read_text()
    assert "recorded · 2-way" in markdown and any(p.name == "leaderboard.md" for p in files)
    # train and tune take it too, at its one level, without being told the SNR
    two_train = _tomogram_import(scene, "particles_relion5.star", tmp_path / "two-train", test_classes=["syn003"],
                                 val_classes=["syn002"])
    card = api.train("protonet", tmp_path / "model", dataset=two_train, budget="2ep", params={"channels": [4, 8]})
    assert card.fit["episodes"] == 2 and "recorded" in (tmp_path / "model" / "model.json").read_text()
    # and show, info and export read it like a simulated data set
    assert api.show(data, tmp_path / "montage.png").stat().st_size > 0
    exported = starfile.read(api.export(data, tmp_path / "export"))
    assert len(exported) == len(data) and set(exported["fscClass"]) == set(data.classes)


def test_labelled_folders_and_star_tables_import_the_files_as_they_are(tiny_dataset, tmp_path):
    star = api.export(tiny_dataset, tmp_path / "export", snr=1.0)
    particles = starfile.read(star)
    # a folder of class sub-folders, built from the export
    for path, name in zip(particles["rlnImageName"], particles["fscClass"]):
        (tmp_path / "classes" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "export" / path, tmp_path / "classes" / name)
    test = sorted(set(particles.loc[particles["fscSplit"] == "test", "fscClass"]))
    from_star = api.import_data(star, tmp_path / "from-star", class_column="fscClass", test_classes=test)
    from_folder = api.import_data(tmp_path / "classes", tmp_path / "from-folder", test_classes=test)
    assert from_star.manifest["source"]["kind"] == "table" and from_folder.manifest["source"]["kind"] == "folder"
    assert from_star.splits["test"] == test and from_folder.splits["test"] == test
    assert (from_star.box, from_star.voxel_size) == (tiny_dataset.box, tiny_dataset.voxel_size)
    # each imported volume is the exported file, z-scored (the same normalisation fsc predict applies)
    original = tiny_dataset.volumes(1.0)  # the export lists particles in order
    assert len(from_star) == len(from_folder) == len(original)
    for i in range(len(from_star)):
        expected = (original[i] - original[i].mean()) / original[i].std()
        assert np.allclose(from_star.volumes("recorded")[i], expected, atol=1e-4)
    # the export's mask column comes along (fscMaskName); a folder without --masks has none
    assert from_star.has_masks and np.array_equal(from_star.masks, tiny_dataset.masks)
    assert from_folder.has_masks is False and not from_folder.masks.any()


def test_an_interrupted_import_resumes_where_it_stopped(scene, tmp_path, monkeypatch):
    from fewshot_cryoet.datasets import importing
    from fewshot_cryoet.datasets.sources.tomograms import TomogramSource

    complete = _tomogram_import(scene, "particles_relion4.star", tmp_path / "complete")
    monkeypatch.setattr(importing, "SAVE_EVERY", 4)
    original_read, calls = TomogramSource.read, []

    def interrupted(self, index):
        calls.append(index)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return original_read(self, index)

    monkeypatch.setattr(TomogramSource, "read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _tomogram_import(scene, "particles_relion4.star", tmp_path / "resumed")
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".resumed.partial-")]
    assert len(partial) == 1 and not (tmp_path / "resumed").exists()
    # a folder of that name that fsc did not write is refused, and left as it is
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "theirs.txt").write_text("keep")
    partial[0].rename(tmp_path / "kept")
    stranger.rename(partial[0])
    with pytest.raises(FscError, match="was not written by fsc"):
        _tomogram_import(scene, "particles_relion4.star", tmp_path / "resumed")
    assert (partial[0] / "theirs.txt").read_text() == "keep"
    partial[0].rename(stranger)
    (tmp_path / "kept").rename(partial[0])
    calls.clear()
    monkeypatch.setattr(TomogramSource, "read", original_read)
    reads = []
    monkeypatch.setattr(TomogramSource, "read", lambda self, i: reads.append(i) or original_read(self, i))
    resumed = _tomogram_import(scene, "particles_relion4.star", tmp_path / "resumed")
    assert reads[0] == 9 and len(reads) == SCENE.particles - 9  # nothing written before is read again
    assert np.array_equal(resumed.volumes("recorded"), complete.volumes("recorded"))
    assert resumed.content_hash == complete.content_hash
    assert not any(p.name.startswith(".resumed.partial-") for p in tmp_path.iterdir())


def test_a_user_source_is_a_dataset_everywhere(tiny_dataset, tmp_path, monkeypatch):
    """``--dataset FOLDER_OF_CLASSES`` imports once into the cache, then reuses it."""
    monkeypatch.setenv("FSC_CACHE_DIR", str(tmp_path / "cache"))
    star = api.export(tiny_dataset, tmp_path / "export", snr=1.0)
    particles = starfile.read(star)
    for path, name in zip(particles["rlnImageName"], particles["fscClass"]):
        (tmp_path / "mine" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "export" / path, tmp_path / "mine" / name)
    first = api.data_source(tmp_path / "mine").fixed
    assert first.snr_labels == ["recorded"] and len(first) == len(particles)
    again = api.data_source(str(tmp_path / "mine")).fixed
    assert again.path == first.path  # cached, not imported twice
    classes, lines = api.dataset_summary(first)
    assert any("imported from" in line for line in lines)


def test_bad_sources_get_one_line_errors(scene, tmp_path):
    with pytest.raises(FscError, match="tomograms"):
        api.import_data(scene / "particles_relion4.star", tmp_path / "x")
    (tmp_path / "map.csv").write_text("value,name\n1,a\n")
    with pytest.raises(FscError, match="class_map .*no name for class value"):
        api.import_data(scene / "particles_relion4.star", tmp_path / "y", tomograms=scene / "tomogram.mrc",
                        class_map=tmp_path / "map.csv")
    table = starfile.read(scene / "particles_relion4.star")
    table["rlnImageName"] = [f"gone{i}.mrc" for i in range(len(table))]
    starfile.write(table, tmp_path / "gone.star")
    with pytest.raises(FscError, match="24 listed file\\(s\\) not found: .*gone0.mrc.* and 14 more"):
        api.import_data(tmp_path / "gone.star", tmp_path / "w")
    with pytest.raises(FscError, match="not a data set folder and not a source"):
        (tmp_path / "notes.txt").write_text("hello")
        api.import_data(tmp_path / "notes.txt", tmp_path / "z")
    assert not any((tmp_path / name).exists() for name in ("x", "y", "z", "w"))


def test_a_pick_outside_its_tomogram_names_the_file_and_the_pick(scene, tmp_path):
    """A pick error says where (the coordinates file and the particle's number) and prints plain
    numbers, not NumPy reprs."""
    table = starfile.read(scene / "particles_relion4.star")
    table.loc[table.index[2], "rlnCoordinateZ"] = 10_000.0
    starfile.write(table, tmp_path / "picks.star")
    with pytest.raises(FscError) as refused:
        api.import_data(tmp_path / "picks.star", tmp_path / "out", tomograms=scene / "tomogram.mrc",
                        class_map=scene / "classes.csv")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'picks.star'}: particle 3: particle at voxel (z, y, x) (10000.0, ")
    assert "np.float64" not in message and "\n" not in message
    assert not (tmp_path / "out").exists()
