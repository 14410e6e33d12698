"""Example third-party plugin: a training-free method that also segments, and a CLI command.

``shellseg``: classifies a query by the nearest support in radial-profile space (mean density in
spherical shells, invariant to rotation), and segments it by thresholding the Gaussian-smoothed
query at one standard deviation above its mean.
"""

from __future__ import annotations

import click
import torch
import torch.nn.functional as F

from fewshot_cryoet import hookimpl
from fewshot_cryoet.methods.base import FewShotMethod, Prediction


class ShellSegmenter(FewShotMethod):
    name = "shellseg"
    description = "Nearest support by radial density profile; threshold segmentation"
    segments = True
    trainable = False
    defaults = {"threshold": 1.0}
    variants = {"default": {}, "strict": {"threshold": 1.5}}

    @staticmethod
    def _profiles(volumes: torch.Tensor) -> torch.Tensor:
        size = volumes.shape[-1]
        axis = torch.arange(size) - (size - 1) / 2
        z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
        shell = torch.sqrt(z**2 + y**2 + x**2).round().long().clamp(max=size // 2)
        flat = volumes.flatten(1).float()
        counts = torch.bincount(shell.flatten(), minlength=size // 2 + 1).float()
        sums = torch.zeros(len(flat), size // 2 + 1).index_add_(1, shell.flatten(), flat)
        return sums / counts.clamp_min(1)  # the centre shell is empty on even grids

    def predict(self, episode):
        support = self._profiles(episode.support)
        query = self._profiles(episode.query)
        distances = torch.cdist(query, support)
        scores = torch.stack(
            [-distances[:, episode.support_labels == c].min(dim=1).values for c in range(episode.n_way)], dim=1
        )
        smooth = F.avg_pool3d(episode.query.float(), 3, stride=1, padding=1)
        mean = smooth.mean(dim=(2, 3, 4), keepdim=True)
        std = smooth.std(dim=(2, 3, 4), keepdim=True)
        probabilities = torch.sigmoid(4 * ((smooth - mean) / std - self.params["threshold"]))
        return Prediction(scores, probabilities)


@hookimpl
def fsc_register_methods(registry):
    registry.add(ShellSegmenter)


@click.command("example-hello")
def hello():
    """Say hello from the example plugin."""
    click.echo("hello from fsc-example-plugin")


@hookimpl
def fsc_add_cli_commands(cli):
    cli.add_command(hello)
