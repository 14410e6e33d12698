"""Named imaging presets: a shifted domain is one flag away (``fsc simulate --preset NAME``).

Each preset changes the default imaging in one documented way (``all-shifted`` in all of them at
once), so a model trained on the default domain can be tested on data "from another microscope"
with ``fsc bench --train-dataset DEFAULT --dataset SHIFTED``. Options given on the command line
override the preset's values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fewshot_cryoet.core.errors import SettingError


@dataclass(frozen=True)
class Preset:
    description: str
    settings: dict[str, Any]


PRESETS: dict[str, Preset] = {
    "default": Preset("the simulator's defaults: 300 kV, 2–6 µm underfocus, ±60°/2° tilts, 7% amplitude "
                      "contrast, envelope σ 0.4", {}),
    "near-focus": Preset("0.5–1.5 µm underfocus: little low-frequency contrast", {"defocus_um": (0.5, 1.5)}),
    "far-focus": Preset("5–8 µm underfocus: strong low-pass, dense CTF rings", {"defocus_um": (5.0, 8.0)}),
    "strong-envelope": Preset("CTF envelope σ 0.15–0.25 of Nyquist per particle (a stronger B-factor)",
                              {"envelope_sigma": (0.15, 0.25)}),
    "amplitude-contrast": Preset("10–20% amplitude contrast per particle (phase plate-like low frequencies)",
                                 {"amplitude_contrast": (0.1, 0.2)}),
    "low-resolution": Preset("each particle low-passed to 25–40 Å (a poorer map or sample)",
                             {"lowpass_angstrom": (25.0, 40.0)}),
    "narrow-tilts": Preset("±45° tilt range in 3° steps: a wider missing wedge", {"tilt_min": -45.0, "tilt_max": 45.0,
                                                                                  "tilt_step": 3.0}),
    "structured-background": Preset("half of the noise variance from a 1/f background (ice, crowding)",
                                    {"background": 0.5}),
    "inverted": Preset("dark particles on a bright background, as raw tomograms show them",
                       {"contrast": "negative"}),
    "misaligned": Preset("residual tilt-series misalignment: every projection shifted by 0.5–1.5 voxels (SD, "
                         "drawn per particle) before back-projection", {"alignment_jitter": (0.5, 1.5)}),
    "pixel-size": Preset("imaged at 13–16 Å per pixel (per particle), then resampled to the data set's 10 Å",
                         {"acquisition_voxel_size": (13.0, 16.0)}),
}
#: The shifted domains that ``all-shifted`` combines (all but the contrast sign, which ``fsc
#: predict --invert`` undoes).
COMBINED = ("near-focus", "strong-envelope", "amplitude-contrast", "low-resolution", "narrow-tilts",
            "structured-background", "misaligned", "pixel-size")
PRESETS["all-shifted"] = Preset(
    "every shift above at once except the contrast sign (near focus, strong envelope, more amplitude "
    "contrast, low resolution, narrow tilts, structured background, misalignment, another pixel size)",
    {k: v for name in COMBINED for k, v in PRESETS[name].settings.items()})
PRESETS["randomised"] = Preset(
    "for domain-randomised training: wide ranges of every imaging setting, drawn per particle (0.5–8 µm "
    "underfocus, envelope σ 0.15–0.5, 5–20% amplitude contrast, low-pass 12–40 Å, tilt ends ±40–70° in "
    "1–3° steps, 0–1.5 voxels misalignment, 8–16 Å pixels, 30% 1/f background). Its ranges cover every "
    "shifted domain above but two: the structured background's larger share (50%) and the inverted contrast "
    "(which `fsc predict --invert` undoes)",
    {"defocus_um": (0.5, 8.0), "envelope_sigma": (0.15, 0.5), "amplitude_contrast": (0.05, 0.2),
     "lowpass_angstrom": (12.0, 40.0), "tilt_min": (-70.0, -40.0), "tilt_max": (40.0, 70.0), "tilt_step": (1.0, 3.0),
     "alignment_jitter": (0.0, 1.5), "acquisition_voxel_size": (8.0, 16.0), "background": 0.3})


#: The imaging ``fsc train`` simulates its training data with by default (data simulated on
#: demand only): domain-randomised training held up best when the imaging changed
#: (``leaderboards/robustness``).
TRAINING_IMAGING = "randomised"


def apply_preset(config, name: str | None, overrides: dict[str, Any] | None = None):
    """``config`` with the preset's settings, then ``overrides`` (explicit choices win)."""
    if name is not None and name not in PRESETS:
        raise SettingError("preset", f"preset {name!r}: use one of {', '.join(PRESETS)}")
    settings = {**(PRESETS[name].settings if name else {}), **(overrides or {})}
    return replace(config, **settings) if settings else config
