"""copick projects (through the copick library): picks per object become classes.

For every run of the project, the tomogram of ``--tomo-type`` (default: the first) at
``--voxel-spacing`` (default: the first the run has) is opened as a zarr array, so only the
regions around picks are read. Every pick set (optionally only ``--objects`` and ``--user-id``)
gives particles of its object's class, at the pick's full position (location plus the transform's
translation, in Å, copick's convention). Where the run has a multilabel segmentation at that voxel
spacing (``--segmentation`` names one), a particle's mask is the voxels of its object's label.

A configuration whose overlay or static root points at the CZ cryo-ET Data Portal is read by the
same code, since copick hides where the data live; only local filesystem projects are tested here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.datasets.sources.base import ParticleSource, ReadParticle, SourceOptions, SourceParticle
from fewshot_cryoet.datasets.sources.tomograms import DEFAULT_BOX, cut_out


class CopickSource(ParticleSource):
    name: ClassVar[str] = "copick"
    description: ClassVar[str] = "a copick project configuration (JSON), read with the copick library"
    suffixes: ClassVar[tuple[str, ...]] = (".json",)

    @classmethod
    def accepts(cls, path: Path, options: SourceOptions) -> bool:
        if not cls.named_like(path):
            return False
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(config, dict) and "pickable_objects" in config

    def __init__(self, path: Path, options: SourceOptions) -> None:
        super().__init__(path, options)
        import copick

        try:
            self.root = copick.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - copick raises many kinds; one line for the user
            raise FscError(f"{path}: copick cannot open this project ({type(exc).__name__}: {exc})") from None
        self._runs: dict[str, dict] = {}
        self._particles: list[SourceParticle] = []
        try:
            self._collect_picks(options)
        except FscError:
            raise
        except Exception as exc:  # noqa: BLE001 - a remote root (s3://, the Data Portal) fails many ways offline
            text = (str(exc).strip().splitlines() or [""])[0][:160]
            raise FscError(f"{path}: copick cannot read the project's runs ({type(exc).__name__}: {text}); check its "
                           "overlay_root and static_root, and that a remote one can be reached") from None
        if not self._particles:
            raise FscError(f"{path}: no picks at voxel spacing {options.voxel_spacing or 'any'} in any run")

    def _collect_picks(self, options: SourceOptions) -> None:
        for run in self.root.runs:
            spacing = self._spacing(run)
            if spacing is None:
                continue
            for picks in run.get_picks(object_name=list(options.objects) or None, user_id=options.user_id):
                positions = picks.full_positions()
                for x, y, z in positions:
                    self._particles.append(SourceParticle(picks.pickable_object_name, {
                        "run": run.name, "x_A": float(x), "y_A": float(y), "z_A": float(z),
                        "user_id": picks.user_id, "session_id": picks.session_id}))

    def _spacing(self, run):
        spacings = run.voxel_spacings
        if self.options.voxel_spacing is not None:
            return run.get_voxel_spacing(self.options.voxel_spacing)
        return spacings[0] if spacings else None

    def _opened(self, run_name: str) -> dict:
        """The run's tomogram (and label) zarr arrays, opened once; nothing is read until sliced."""
        if run_name not in self._runs:
            import zarr

            run = self.root.get_run(run_name)
            spacing = self._spacing(run)
            tomograms = spacing.get_tomograms(self.options.tomo_type) if self.options.tomo_type else spacing.tomograms
            if not tomograms:
                raise FscError(f"{self.path}: run {run_name} has no tomogram{' of type ' + self.options.tomo_type if self.options.tomo_type else ''} "
                               f"at voxel spacing {spacing.voxel_size:g} Å")
            opened = {"voxel": float(spacing.voxel_size), "tomogram": zarr.open(tomograms[0].zarr(), mode="r")["0"]}
            segmentations = run.get_segmentations(voxel_size=spacing.voxel_size, is_multilabel=True,
                                                  name=self.options.segmentation)
            if segmentations:
                opened["labels"] = zarr.open(segmentations[0].zarr(), mode="r")["0"]
            self._runs[run_name] = opened
        return self._runs[run_name]

    def particles(self) -> list[SourceParticle]:
        return self._particles

    def grid(self) -> tuple[int, float]:
        first = self._opened(self._particles[0].provenance["run"])
        return self.options.box or DEFAULT_BOX, self.options.voxel_size or first["voxel"]

    @property
    def has_masks(self) -> bool:
        return "labels" in self._opened(self._particles[0].provenance["run"])

    def read(self, index: int) -> ReadParticle:
        particle = self._particles[index]
        box, voxel_size = self.grid()
        run = self._opened(particle.provenance["run"])
        p = particle.provenance
        centre = np.array([p["z_A"], p["y_A"], p["x_A"]]) / run["voxel"]
        volume, padded = cut_out(run["tomogram"], run["voxel"], centre, box, voxel_size)
        mask = None
        if "labels" in run:
            label = self.root.get_object(particle.class_name).label
            mask, _ = cut_out(run["labels"], run["voxel"], centre, box, voxel_size, mask_label=float(label))
        return ReadParticle(volume, mask, padded)

    def input_files(self) -> list[Path]:
        """The configuration and, for a local project, every file of its overlay (and static) root."""
        config = json.loads(self.path.read_text())
        files = [self.path]
        for key in ("overlay_root", "static_root"):
            root = str(config.get(key) or "")
            if root.startswith("local://"):
                files.append(Path(root[len("local://"):]))
        return files
