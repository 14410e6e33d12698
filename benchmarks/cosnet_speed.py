"""COS-Net speed: our implementation against a deliberately plain one, same weights, same machine.

Run:  python benchmarks/cosnet_speed.py [--profile paper] [--out benchmarks/results/cosnet_speed.md]

The plain baseline below is the paper-profile network written the straightforward way: fp32,
eager, contiguous memory, batch norm as separate layers, every layer run for every volume. Ours is
``fewshot_cryoet.methods.cosnet`` as the suite runs it: channels-last 3D memory, bf16 autocast for
training where the processor has native bf16 (AVX512-BF16/AMX on CPU; always on CUDA), batch norm
folded into the convolutions for inference, the decoder skipped when only classes are needed.
Both get the same weights, and the outputs and training losses are compared.

Measured: training (forward + backward + Adam step on a 5-way episode of two support sets: 10
volumes, 25 pairs, BCE + Dice), full inference (encoder + decoder + features) and
classification-only inference (encoder + features), in subtomograms per second.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewshot_cryoet.episodes import Episode
from fewshot_cryoet.methods.cosnet import COSNet


# -- the plain baseline ------------------------------------------------------------------------
class PlainDuSE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Linear(c, c // 2), nn.ReLU(), nn.Linear(c // 2, c), nn.Sigmoid())
        self.spatial = nn.Conv3d(c, 1, 1)

    def forward(self, x):
        w = self.squeeze(x.mean(dim=(2, 3, 4)))
        return x * w.view(w.shape[0], w.shape[1], 1, 1, 1) + x * torch.sigmoid(self.spatial(x))


class PlainCOSNet(nn.Module):
    """Same layers and parameter names as ours, computed plainly."""

    def __init__(self, c: int = 64, embedding: int = 512, box: int = 32) -> None:
        super().__init__()
        self.encoder = nn.ModuleList([
            nn.Sequential(nn.Conv3d(1 if i == 0 else c, c, 3, padding=1, bias=False), nn.BatchNorm3d(c), nn.ReLU(),
                          PlainDuSE(c)) for i in range(3)])
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(c * (box // 4) ** 3, embedding), nn.ReLU(),
                                      nn.Linear(embedding, embedding))
        self.decoder = nn.Sequential(
            nn.ConvTranspose3d(c, c, 2, stride=2), nn.BatchNorm3d(c), nn.ReLU(),
            nn.ConvTranspose3d(c, c, 2, stride=2), nn.BatchNorm3d(c), nn.ReLU(), nn.Conv3d(c, 1, 3, padding=1))
        self.head = nn.Linear(embedding, 1)

    def stream(self, x):
        for i, level in enumerate(self.encoder):
            x = level(x)
            if i < 2:
                x = F.max_pool3d(x, 2)
        return self.features(x), self.decoder(x)

    def loss(self, support, query, s_masks, q_masks, labels_s, labels_q):
        fs, ls = self.stream(support)
        fq, lq = self.stream(query)
        logits = torch.stack([torch.stack([self.head((a - b).abs())[0] for b in fs]) for a in fq])
        same = (labels_q[:, None] == labels_s[None, :]).float()
        w = same / same.sum() + (1 - same) / (1 - same).sum()
        bce = F.binary_cross_entropy_with_logits(logits, same, weight=w, reduction="sum") / 2

        def dice(l, m):
            p = torch.sigmoid(l).flatten(1)
            t = m.float().flatten(1)
            return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()

        return bce + (dice(ls, s_masks) + dice(lq, q_masks)) / 2


# -- measurement --------------------------------------------------------------------------------
def rate(fn, volumes: int, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return volumes * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cosnet_speed.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    ours = COSNet({"profile": args.profile}, "duse-decoder", device=device)
    c = ours.network.encoder[0][0].out_channels
    embedding = ours.network.features[-1].out_features
    plain = PlainCOSNet(c, embedding).to(device)
    plain.load_state_dict(ours.network.state_dict())

    n = 5
    support = torch.randn(n, 1, 32, 32, 32, device=device)
    query = torch.randn(n, 1, 32, 32, 32, device=device)
    s_masks, q_masks = support > 0.5, query > 0.5
    labels = torch.arange(n, device=device)
    episode = Episode(support, labels, query, labels, tuple("abcde"), 10.0, 1.0, s_masks, q_masks)

    # Outputs must match (same weights; inference copy folded and channels-last).
    plain.eval()
    ours.network.eval()
    with torch.inference_mode():
        f_plain, l_plain = plain.stream(query)
        f_ours, l_ours = ours.inference_network.stream(query)
    feature_error = float((f_plain - f_ours.float()).abs().max() / f_plain.abs().max())
    probability_error = float((torch.sigmoid(l_plain) - torch.sigmoid(l_ours.float())).abs().max())

    # Training losses must match too, within bf16 tolerance when ours trains in bf16.
    plain.train()
    ours.network.train()
    with torch.no_grad():
        loss_plain = float(plain.loss(support, query, s_masks, q_masks, labels, labels))
        with ours.autocast(training=True):
            loss_ours = float(ours.training_loss(episode))
    loss_error = abs(loss_ours - loss_plain) / abs(loss_plain)
    precision = "bf16 autocast" if ours.autocast(training=True)._enabled else "fp32"

    results = []
    plain.train()
    optimizer_plain = torch.optim.Adam(plain.parameters(), lr=1e-4)

    def plain_step():
        loss = plain.loss(support, query, s_masks, q_masks, labels, labels)
        optimizer_plain.zero_grad()
        loss.backward()
        optimizer_plain.step()

    ours.network.train()  # channels-last already: TorchMethod builds networks that way
    optimizer_ours = torch.optim.Adam(ours.network.parameters(), lr=1e-4)

    def ours_step():
        with ours.autocast(training=True):
            loss = ours.training_loss(episode)
        optimizer_ours.zero_grad()
        loss.backward()
        optimizer_ours.step()

    train_plain = rate(plain_step, 2 * n, args.repeats)
    train_ours = rate(ours_step, 2 * n, args.repeats)
    results.append(("training (fwd + bwd + step, 10 volumes)", train_plain, train_ours))

    batch = torch.randn(8, 1, 32, 32, 32, device=device)
    plain.eval()
    ours.network.eval()
    ours._weights_changed()
    fast = ours.inference_network
    with torch.inference_mode():
        full_plain = rate(lambda: plain.stream(batch), 8, args.repeats)
        with ours.autocast(training=False):
            full_ours = rate(lambda: fast.stream(batch), 8, args.repeats)
            class_ours = rate(lambda: fast.embed(batch), 8, args.repeats)
    results.append(("inference, encoder + decoder + features", full_plain, full_ours))
    results.append(("classification-only inference (decoder skipped) vs plain full", full_plain, class_ours))

    lines = [
        "# COS-Net speed: ours vs a plain implementation",
        "",
        f"- profile: {args.profile} ({c} channels, {embedding}-d features), DuSE blocks, decoder on, box 32³",
        f"- device: {device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads)",
        f"- outputs match: max relative feature difference {feature_error:.2e}, "
        f"max probability difference {probability_error:.2e} (fp32 inference); training loss relative "
        f"difference {loss_error:.2e} (ours trains in {precision})",
        f"- date: {time.strftime('%Y-%m-%d')}",
        "",
        "| what | plain (volumes/s) | ours (volumes/s) | speed-up |",
        "|---|---|---|---|",
    ]
    lines += [f"| {what} | {p:.2f} | {o:.2f} | {o / p:.2f}× |" for what, p, o in results]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
