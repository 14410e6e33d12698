"""Export a data set to MRC files plus a RELION-style STAR file, for other tools.

Angles: RELION's ``rlnAngleRot/Tilt/Psi`` are ZYZ Euler angles of the rotation that maps the
particle onto the reference, i.e. the inverse of the rotation the simulator applied to the
template; the columns are written that way. Shifts: ``rlnOriginX/Y/ZAngst`` are the negated
simulated shifts (RELION subtracts the origin to centre the particle). The simulator's own
quaternions, split and SNRs are carried in extra ``fsc*`` columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import starfile
from scipy.spatial.transform import Rotation

from fewshot_cryoet.core.reporting import Reporter, as_reporter
from fewshot_cryoet.datasets.dataset import RECORDED, SubtomogramDataset, parse_snr, snr_label
from fewshot_cryoet.datasets.mrc_io import write_volume
from fewshot_cryoet.datasets.sources.base import check_class_name


def export_dataset(
    dataset: SubtomogramDataset, out: str | Path, snr: float | str, overwrite: bool = False,
    reporter: Reporter | None = None,
) -> Path:
    """Write ``subtomograms/*.mrc``, ``masks/*.mrc`` and ``particles.star`` under ``out``."""
    from fewshot_cryoet.core.outputs import AtomicFolder

    label = snr_label(parse_snr(snr))
    dataset.volumes(label)  # an SNR the data set lacks is refused before the folder is touched
    for entry in dataset.manifest["classes"]:  # class names become file names below out
        check_class_name(str(entry["name"]), f"{dataset.path}", "dataset")
    with AtomicFolder(Path(out), "export", overwrite) as folder:
        _export_into(folder.tmp, dataset, label, as_reporter(reporter))
        folder.commit()
    return Path(out) / "particles.star"


def _export_into(out: Path, dataset: SubtomogramDataset, label: str, reporter: Reporter) -> None:
    (out / "subtomograms").mkdir()
    (out / "masks").mkdir()
    volumes = dataset.volumes(label)
    masks = dataset.masks
    labels = dataset.labels[dataset.labels["snr"].map(snr_label) == label].reset_index(drop=True)
    voxel = dataset.voxel_size
    task = reporter.task("exporting", total=len(labels))
    image_names, mask_names = [], []
    for particle, class_name in zip(labels["particle"], labels["class"]):
        name = f"{particle:06d}_{class_name}.mrc"
        write_volume(out / "subtomograms" / name, volumes[particle], voxel)
        write_volume(out / "masks" / name, masks[particle], voxel)
        image_names.append(f"subtomograms/{name}")
        mask_names.append(f"masks/{name}")
        task.advance()
    columns = {
        "rlnImageName": image_names,
        "rlnClassNumber": labels["class_index"].to_numpy() + 1,
        "rlnImagePixelSize": np.full(len(labels), voxel),
        "rlnImageSize": np.full(len(labels), dataset.box),
        "rlnImageDimensionality": np.full(len(labels), 3),
        "fscClass": labels["class"].to_numpy(),
        "fscSplit": labels["split"].to_numpy(),
        "fscMaskName": mask_names,
        "fscSnr": labels["snr"].to_numpy(),
        "fscSnrMeasured": labels["snr_measured"].to_numpy(),
    }
    if "quat_x" in labels:  # simulated: the true pose and defocus (imported data have none)
        quats = labels[["quat_x", "quat_y", "quat_z", "quat_w"]].to_numpy()
        relion = Rotation.from_quat(quats).inv().as_euler("ZYZ", degrees=True)
        columns.update({
            "rlnAngleRot": relion[:, 0], "rlnAngleTilt": relion[:, 1], "rlnAnglePsi": relion[:, 2],
            "rlnOriginXAngst": -labels["shift_x_A"].to_numpy(), "rlnOriginYAngst": -labels["shift_y_A"].to_numpy(),
            "rlnOriginZAngst": -labels["shift_z_A"].to_numpy(),
            "rlnDefocusU": labels["defocus_um"].to_numpy() * 1e4, "rlnDefocusV": labels["defocus_um"].to_numpy() * 1e4,
            "fscQuatX": quats[:, 0], "fscQuatY": quats[:, 1], "fscQuatZ": quats[:, 2], "fscQuatW": quats[:, 3],
        })
    table = pd.DataFrame(columns)
    if table["fscSnr"].isna().all():  # imported data: the one level is "recorded", its SNR unknown
        table["fscSnr"] = RECORDED
    # A column with no value at all (a measured SNR of data from a microscope) is left out rather than
    # written as <NA>, which RELION and starfile cannot read back as a number.
    table = table.dropna(axis=1, how="all")
    starfile.write({"particles": table}, out / "particles.star", overwrite=True)
