"""``fsc train`` and ``fsc predict`` end to end, as a user would run them: real MRC and STAR files
of classes the model never trained on, one picked example per class, the rest predicted."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from click.testing import CliRunner
from scipy.ndimage import zoom

from fewshot_cryoet.cli import main
from fewshot_cryoet.datasets.mrc_io import read_volume, write_volume
from fewshot_cryoet.episodes import Episode
from fewshot_cryoet.evaluation.metrics import dice
from fewshot_cryoet.methods.xcorr import CrossCorrelation

TINY_COSNET = ["--param", "cosnet.channels=4", "--param", "cosnet.embedding=16", "--param", "cosnet.box=16"]


def _fsc(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def exported(tiny_dataset, tmp_path_factory):
    """The tiny data set's particles at SNR 1 as MRC files + particles.star (with masks)."""
    out = tmp_path_factory.mktemp("export") / "particles"
    result = _fsc("export", tiny_dataset.path, "--out", out, "--snr", 1)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def model(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "cosnet-model"
    result = _fsc("train", "--method", "cosnet/duse-decoder", *TINY_COSNET, "--dataset", tiny_dataset.path,
                  "--snr", 1, "--budget", "20ep", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def _support_and_queries(exported, tiny_dataset, folder):
    """One support example per test class (CSV), every other test particle as a query (STAR)."""
    table = starfile.read(exported / "particles.star")
    test = table[table["fscClass"].isin(tiny_dataset.splits["test"])].reset_index(drop=True)
    first = test.groupby("fscClass").head(1)
    support = pd.DataFrame({"path": [str(exported / p) for p in first["rlnImageName"]], "class": first["fscClass"]})
    support_csv = folder / "support.csv"
    support.to_csv(support_csv, index=False)
    queries = test.drop(index=first.index).reset_index(drop=True)
    queries["rlnImageName"] = [str(exported / p) for p in queries["rlnImageName"]]
    queries_star = folder / "queries.star"
    starfile.write({"particles": queries}, queries_star, overwrite=True)
    return support_csv, queries_star, queries


def test_model_folder_describes_itself(model, tiny_dataset):
    card = json.loads((model / "model.json").read_text())
    assert card["method"] == "cosnet" and card["variant"] == "duse-decoder"
    assert card["box"] == 16 and card["voxel_size"] == 20.0 and card["snr"] == "1"
    assert card["dataset_hash"] == tiny_dataset.content_hash and card["package_version"]
    assert set(card["train_classes"]) == set(tiny_dataset.splits["train"])
    assert card["fit"]["episodes"] == 20 and (model / "weights.pt").exists()
    again = _fsc("train", "--method", "cosnet/duse-decoder", *TINY_COSNET, "--dataset", tiny_dataset.path,
                 "--snr", 1, "--budget", "2ep", "--out", model)
    assert again.exit_code == 2 and "--overwrite" in again.output
    xcorr = _fsc("train", "--method", "xcorr", "--dataset", tiny_dataset.path, "--out", model.parent / "x")
    assert xcorr.exit_code == 2 and "needs no training" in xcorr.output


def test_predict_unseen_classes_from_star_and_csv(model, exported, tiny_dataset, tmp_path):
    support_csv, queries_star, queries = _support_and_queries(exported, tiny_dataset, tmp_path)
    out = tmp_path / "results"
    result = _fsc("predict", "--model", model, "--support", support_csv, "--queries", queries_star, "--out", out,
                  "--save-probabilities", "--batch-size", 4)
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == len(queries)
    # Input columns are carried through unchanged; scores and probabilities per class are added.
    assert np.allclose(predictions["rlnAngleRot"], queries["rlnAngleRot"])
    classes = sorted(tiny_dataset.splits["test"])
    assert set(predictions["predicted_class"]) <= set(classes)
    probabilities = predictions[[f"probability_{c}" for c in classes]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(predictions["confidence"], probabilities.max(axis=1))
    star = starfile.read(out / "predictions.star")
    assert list(star["fscPredictedClass"]) == list(predictions["predicted_class"])
    # One CRF-refined segmentation per query on the query's own grid, and the raw probabilities.
    first = predictions["segmentation"].iloc[0]
    mask, voxel = read_volume(out / first)
    assert mask.shape == (16, 16, 16) and voxel == 20.0 and set(np.unique(mask)) <= {0.0, 1.0}
    assert len(list((out / "segmentations").glob("*.mrc"))) == len(queries)
    assert len(list((out / "probabilities").glob("*.mrc"))) == len(queries)
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
    # Dice of the saved masks against the exported ground truth is a real number in [0, 1].
    truth_names = queries["fscMaskName"]
    dices = []
    for seg, truth in zip(predictions["segmentation"], truth_names):
        p = torch.from_numpy(read_volume(out / seg)[0] > 0.5)
        t = torch.from_numpy(read_volume(exported / truth)[0] > 0.5)
        dices.append(float(dice(p[None], t[None])[0]))
    assert 0 <= np.mean(dices) <= 1
    refused = _fsc("predict", "--model", model, "--support", support_csv, "--queries", queries_star, "--out", out)
    assert refused.exit_code == 2 and "--overwrite" in refused.output


def test_xcorr_without_model_from_folders_with_resampling(exported, tiny_dataset, tmp_path):
    table = starfile.read(exported / "particles.star")
    test = table[table["fscClass"].isin(tiny_dataset.splits["test"])]
    support_dir, query_dir = tmp_path / "support", tmp_path / "queries"
    for class_name, rows in test.groupby("fscClass"):
        (support_dir / class_name).mkdir(parents=True)
        volume, voxel = read_volume(exported / rows["rlnImageName"].iloc[0])
        write_volume(support_dir / class_name / "pick.mrc", volume, voxel)
        query_dir.mkdir(exist_ok=True)
        for i, name in enumerate(rows["rlnImageName"].iloc[1:]):
            volume, voxel = read_volume(exported / name)
            write_volume(query_dir / f"{class_name}_{i}.mrc", volume, voxel)
    out = tmp_path / "xcorr"
    result = _fsc("predict", "--method", "xcorr", "--support", support_dir, "--queries", query_dir, "--out", out)
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(out / "predictions.csv")
    assert "segmentation" not in predictions.columns and not (out / "segmentations").exists()  # xcorr does not segment
    # The same as calling the method on an in-memory episode of the same volumes.
    classes = sorted(p.name for p in support_dir.iterdir())
    support = torch.from_numpy(np.stack([read_volume(support_dir / c / "pick.mrc")[0] for c in classes]))[:, None]
    query_files = [Path(p) for p in predictions["rlnImageName"]]
    query = torch.from_numpy(np.stack([read_volume(p)[0] for p in query_files]))[:, None]
    episode = Episode(support, torch.arange(len(classes)), query, torch.zeros(len(query), dtype=torch.long),
                      tuple(classes), 20.0, 1.0)
    direct = CrossCorrelation().predict(episode).scores.argmax(dim=1)
    assert list(predictions["predicted_class"]) == [classes[i] for i in direct]
    assert np.allclose(predictions[[f"score_{c}" for c in classes]].to_numpy(),
                       CrossCorrelation().predict(episode).scores.numpy(), atol=1e-5)

    # A query at 10 Å on a 32³ grid is resampled to the support's 20 Å / 16³ and still predicted.
    volume, _ = read_volume(next(query_dir.glob("*.mrc")))
    fine = tmp_path / "fine"
    fine.mkdir()
    write_volume(fine / "q.mrc", zoom(volume, 2, order=1).astype(np.float32), 10.0)
    mismatched = _fsc("predict", "--method", "xcorr", "--support", support_dir, "--queries", fine / "q.mrc",
                      "--out", tmp_path / "fine-out")
    assert mismatched.exit_code == 2 and "differs from the support" in mismatched.output


def test_bad_input_one_line_errors(model, exported, tiny_dataset, tmp_path, nan_mrc):
    support_csv, queries_star, queries = _support_and_queries(exported, tiny_dataset, tmp_path)
    table = starfile.read(queries_star)
    table.loc[0, "rlnImageName"] = str(tmp_path / "gone1.mrc")
    table.loc[1, "rlnImageName"] = str(tmp_path / "gone2.mrc")
    broken = tmp_path / "broken.star"
    starfile.write({"particles": table}, broken, overwrite=True)
    missing = _fsc("predict", "--model", model, "--support", support_csv, "--queries", broken, "--out", tmp_path / "o")
    assert missing.exit_code == 2 and "gone1.mrc" in missing.output and "gone2.mrc" in missing.output
    assert not (tmp_path / "o").exists()

    nan_file = nan_mrc
    nan = _fsc("predict", "--model", model, "--support", support_csv, "--queries", nan_file, "--out", tmp_path / "o")
    assert nan.exit_code == 2 and "nan.mrc" in nan.output and "NaN" in nan.output
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.tmp").exists()

    flat = tmp_path / "flat.mrc"
    with mrcfile.new(flat) as mrc:
        mrc.set_data(np.ones((16, 16), np.float32))
    not_3d = _fsc("predict", "--model", model, "--support", support_csv, "--queries", flat, "--out", tmp_path / "o")
    assert not_3d.exit_code == 2 and "flat.mrc" in not_3d.output and "3D" in not_3d.output

    zero_voxel = tmp_path / "zero.mrc"
    write_volume(zero_voxel, np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32), 0.0)
    no_voxel = _fsc("predict", "--model", model, "--support", support_csv, "--queries", zero_voxel, "--out", tmp_path / "o")
    assert no_voxel.exit_code == 2 and "--voxel-size" in no_voxel.output

    empty_class = tmp_path / "support-folder"
    (empty_class / "a").mkdir(parents=True)
    (empty_class / "b").mkdir()
    write_volume(empty_class / "a" / "x.mrc", np.random.default_rng(1).normal(size=(16,) * 3).astype(np.float32), 20.0)
    no_example = _fsc("predict", "--model", model, "--support", empty_class, "--queries", zero_voxel, "--out", tmp_path / "o")
    assert no_example.exit_code == 2 and "'b' has no support example" in no_example.output

    newer = tmp_path / "newer-model"
    newer.mkdir()
    card = json.loads((model / "model.json").read_text())
    card["format"] = 99
    (newer / "model.json").write_text(json.dumps(card))
    future = _fsc("predict", "--model", newer, "--support", support_csv, "--queries", queries_star, "--out", tmp_path / "o")
    assert future.exit_code == 2 and "newer" in future.output and "newer-model" in future.output


def test_a_trained_matched_model_predicts_like_the_method_it_saved(exported, tiny_dataset, tmp_path):
    """``fsc train --method matched`` then ``fsc predict --model``: the folder carries the learned
    filter, and predictions are those of the method loaded from it (learned template matching
    goes through the same model folders as every trained method)."""
    from fewshot_cryoet.models.model_dir import load_model

    model = tmp_path / "matched-model"
    trained = _fsc("train", "--method", "matched", "--param", "matched.angular_step=60", "--dataset",
                   tiny_dataset.path, "--snr", 1, "--budget", "3ep", "--out", model)
    assert trained.exit_code == 0, trained.output
    support_csv, queries_star, queries = _support_and_queries(exported, tiny_dataset, tmp_path)
    out = tmp_path / "matched-results"
    result = _fsc("predict", "--model", model, "--support", support_csv, "--queries", queries_star, "--out", out)
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == len(queries) and "segmentation" not in predictions.columns
    method = load_model(model)[0]
    assert method.name == "matched" and not torch.equal(method.network.gain.detach(), torch.zeros(8))
    support = pd.read_csv(support_csv).sort_values("class")
    classes = list(support["class"])
    volumes = [torch.from_numpy(np.stack([read_volume(p)[0] for p in paths]))[:, None]
               for paths in (support["path"], predictions["rlnImageName"])]
    episode = Episode(volumes[0], torch.arange(len(classes)), volumes[1], torch.zeros(len(volumes[1]), dtype=torch.long),
                      tuple(classes), 20.0, 1.0)
    direct = method.predict(episode).scores.argmax(dim=1)
    assert list(predictions["predicted_class"]) == [classes[i] for i in direct]
