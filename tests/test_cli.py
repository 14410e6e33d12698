"""The ``fsc`` command line, run as a user would (in-process through click's runner)."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from fewshot_cryoet.cli import main
from fewshot_cryoet.datasets.dataset import SubtomogramDataset
from fewshot_cryoet.datasets.mrc_io import write_volume


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def test_simulate_synthetic_show_info_export(tmp_path):
    out = tmp_path / "syn"
    result = _run("simulate", "--classes", 4, "--per-class", 3, "--snr", "inf", "--snr", 0.5,
                  "--route", "fourier", "--out", out, "--seed", 5)
    assert result.exit_code == 0, result.output
    ds = SubtomogramDataset(out)
    assert ds.classes == ["syn000", "syn001", "syn002", "syn003"] and len(ds) == 12
    assert "SNR 0.5: measured 0.5" in result.output
    picture = tmp_path / "m.png"
    assert _run("show", out, "--out", picture, "--axis", "y").exit_code == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = _run("info", out, "--verify")
    assert info.exit_code == 0 and "verified" in info.output
    assert _run("export", out, "--out", tmp_path / "exp").exit_code == 0
    assert (tmp_path / "exp" / "particles.star").exists()
    again = _run("simulate", "--classes", 4, "--per-class", 3, "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_simulate_real_templates_with_crowding(tmp_path, shared_data):
    out = tmp_path / "real"
    t = shared_data / "templates"
    result = _run("simulate", "--templates", t / "1bxn.mrc", "--templates", t / "3cf3.mrc",
                  "--templates", shared_data / "pdb" / "1s3x.pdb", "--per-class", 2, "--crowding", "1-3",
                  "--snr", 0.1, "--out", out, "--test-classes", "1s3x")
    assert result.exit_code == 0, result.output
    ds = SubtomogramDataset(out)
    assert ds.classes == ["1bxn", "3cf3", "1s3x"] and ds.splits["test"] == ["1s3x"]
    assert (ds.particles["n_neighbours"] >= 1).all()
    assert np.isfinite(np.asarray(ds.volumes(0.1))).all()


def test_bad_input_gives_one_line_errors(tmp_path):
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"\x00" * 300)
    result = _run("simulate", "--templates", bad, "--out", tmp_path / "o")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert any("broken.mrc" in line and "error" in line for line in lines)
    zero = tmp_path / "zero.mrc"
    volume = np.zeros((12, 12, 12), np.float32)
    volume[4:8, 4:8, 4:8] = 1
    write_volume(zero, volume, 0.0)
    result = _run("simulate", "--templates", zero, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--template-voxel-size" in result.output
    for args, message in [
        (("--contour", 1.5), "--contour"),
        (("--crowding", "2-9"), "--crowding"),
        (("--snr", "loud"), "SNR"),
        (("--box", 31), "--box"),
        (("--tilt-range", "60,-60"), "--tilt-range"),
    ]:
        result = _run("simulate", "--classes", 2, "--per-class", 1, "--out", tmp_path / "x", *args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not (tmp_path / "x").exists() and not (tmp_path / "o").exists()
    missing = _run("show", tmp_path / "nothing")
    assert missing.exit_code == 2 and "no such data set" in missing.output


def test_piped_output_prints_plain_progress_lines_and_wide_tables(tmp_path):
    """nohup, pipes and CI logs cannot redraw bars: each task says when it starts and ends."""
    result = CliRunner().invoke(main, ["simulate", "--classes", "3", "--per-class", "2", "--box", "16",
                                       "--voxel-size", "20", "--route", "fourier", "--snr", "1",
                                       "--out", str(tmp_path / "a-rather-long-folder-name-for-a-data-set")])
    assert result.exit_code == 0, result.output
    assert "simulating: 0/6 (0%)" in result.output and "simulating: 6/6 (100%)" in result.output
    assert "a-rather-long-folder-name-for-a-data-set  (6 subtomograms" in result.output  # the title is not wrapped


def test_several_templates_after_one_flag(tmp_path, shared_data):
    maps = sorted((shared_data / "templates").glob("*.mrc"))[:3]
    result = CliRunner().invoke(main, ["simulate", "--templates", *map(str, maps), "--per-class", "1", "--snr", "1",
                                       "--route", "fourier", "--out", str(tmp_path / "three")])
    assert result.exit_code == 0, result.output
    assert len(SubtomogramDataset(tmp_path / "three").manifest["classes"]) == 3
