"""COS-Net speed: our implementation against a plain one of the published network, same weights.

Run:  python benchmarks/cosnet_speed.py [--repeats 3] [--threads 2,1] [--out benchmarks/results/cosnet_speed.md]

``--threads`` measures each torch thread count in turn (default: all cores, then one): one process
uses every core, while each ``fsc bench --workers`` worker runs one thread.

The plain baseline is the published network (``profile=paper``: stem, two conv → ReLU → BatchNorm
per level, DuSE, 64 channels, 32768 → 512 → 512, a decoder of two levels and a 1×1×1 output; 18.2 M
parameters, 33 GFLOP per volume) run the straightforward way: fp32, eager, contiguous memory,
batch norm as separate layers, every layer run for every volume, the pair loss written out with
Python loops. It is our ``PublishedNetwork`` module (so the layers are the ones the parameter and
FLOP test checks) with none of the levers. Ours is ``fewshot_cryoet.methods.cosnet`` as the suite
runs it: channels-last 3D memory, bf16 autocast where the processor has native bf16 (AVX512-BF16
or AMX on CPU, where it is asked for with ``precision=bf16`` because ``auto`` keeps CPU training in
reproducible fp32; always on CUDA), every BatchNorm folded for inference (after a ReLU it folds into
the next convolution, see ``methods/fast.py``), the decoder skipped when only classes are needed,
and embeddings of repeated volumes cached (not used here: every volume is new).

Measured: training (forward + backward + Adam step on a 5-way episode of two support sets: 10
volumes, 25 pairs, BCE + Dice), full inference (encoder + decoder + features) and
classification-only inference (encoder + features), in subtomograms per second. Not used:
torch.compile (its CPU compile of 3D convolutions took minutes and gave no gain in a trial) and
oneDNN graph fusion (TorchScript only).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fewshot_cryoet.episodes import Episode
from fewshot_cryoet.methods.cosnet import COSNet, PublishedNetwork
from fewshot_cryoet.methods.torch_method import cpu_has_bf16


def plain_loss(net: PublishedNetwork, support, query, s_masks, q_masks, labels_s, labels_q) -> torch.Tensor:
    """The training loss written plainly: pairs in Python loops, BCE + Dice."""
    fs, ls = net.stream(support)
    fq, lq = net.stream(query)
    logits = torch.stack([torch.stack([net.head((a - b).abs())[0] for b in fs]) for a in fq])
    same = (labels_q[:, None] == labels_s[None, :]).float()
    w = same / same.sum() + (1 - same) / (1 - same).sum()
    bce = F.binary_cross_entropy_with_logits(logits, same, weight=w, reduction="sum") / 2

    def dice(logit, mask):
        p = torch.sigmoid(logit).flatten(1)
        t = mask.float().flatten(1)
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", default=None, help="torch thread counts to measure, comma-separated "
                        "[CPU: all cores, then 1; CUDA: as set]")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cosnet_speed.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    counts = ([int(t) for t in args.threads.split(",")] if args.threads else
              [torch.get_num_threads()] if device.type == "cuda" else sorted({os.cpu_count() or 1, 1}, reverse=True))
    lines = []
    for count in counts:
        torch.set_num_threads(count)
        measured = measure(device, args.repeats)  # title, blank, network, then this setting's lines
        lines = (lines or measured[:3]) + ["", f"## {count} torch thread{'s' if count > 1 else ''}", "", *measured[3:]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def measure(device: torch.device, repeats: int = 3) -> list[str]:
    """The comparison on ``device``, as the lines of the results page (also used by gpu_check)."""
    torch.manual_seed(0)
    precision = "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"
    ours = COSNet({"profile": "paper", "precision": precision}, "duse-decoder", device=device)
    c = ours.network.stem[0].out_channels
    embedding = ours.network.features[-1].out_features
    plain = PublishedNetwork(32, c, embedding, True, True, "add").to(device)  # contiguous fp32
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
        with ours.autocast(training=False):  # as the speed is measured below (bf16 where it is on)
            f_fast, l_fast = ours.inference_network.stream(query)
    feature_error = float((f_plain - f_ours.float()).abs().max() / f_plain.abs().max())
    probability_error = float((torch.sigmoid(l_plain) - torch.sigmoid(l_ours.float())).abs().max())
    fast_feature_error = float((f_plain - f_fast.float()).abs().max() / f_plain.abs().max())
    fast_probability_error = float((torch.sigmoid(l_plain) - torch.sigmoid(l_fast.float())).abs().max())
    inference_precision = "bf16 autocast" if ours.autocast(training=False)._enabled else "fp32"

    # Training losses must match too, within bf16 tolerance when ours trains in bf16.
    plain.train()
    ours.network.train()
    with torch.no_grad():
        loss_plain = float(plain_loss(plain, support, query, s_masks, q_masks, labels, labels))
        with ours.autocast(training=True):
            loss_ours = float(ours.training_loss(episode))
    loss_error = abs(loss_ours - loss_plain) / abs(loss_plain)
    precision = "bf16 autocast" if ours.autocast(training=True)._enabled else "fp32"

    results = []
    plain.train()
    optimizer_plain = torch.optim.Adam(plain.parameters(), lr=1e-4)

    def plain_step():
        loss = plain_loss(plain, support, query, s_masks, q_masks, labels, labels)
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

    train_plain = rate(plain_step, 2 * n, repeats)
    train_ours = rate(ours_step, 2 * n, repeats)
    results.append(("training (fwd + bwd + step, 10 volumes)", train_plain, train_ours, 2))

    batch = torch.randn(8, 1, 32, 32, 32, device=device)
    plain.eval()
    ours.network.eval()
    ours._weights_changed()
    fast = ours.inference_network
    with torch.inference_mode():
        full_plain = rate(lambda: plain.stream(batch), 8, repeats)
        with ours.autocast(training=False):
            full_ours = rate(lambda: fast.stream(batch), 8, repeats)
            class_ours = rate(lambda: fast.embed(batch), 8, repeats)
    results.append(("inference, encoder + decoder + features", full_plain, full_ours, 2))
    results.append(("classification-only inference (decoder skipped) vs plain full", full_plain, class_ours, 4))

    lines = [
        "# COS-Net speed: ours vs a plain implementation of the published network",
        "",
        f"- network: the published one (profile paper: {c} channels, {embedding}-d features), DuSE blocks, decoder "
        "on, box 32³",
        f"- device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads)",
        f"- outputs match: max relative feature difference {feature_error:.2e}, "
        f"max probability difference {probability_error:.2e} (fp32 inference); {fast_feature_error:.2e} and "
        f"{fast_probability_error:.2e} as timed ({inference_precision} inference); training loss relative "
        f"difference {loss_error:.2e} (ours trains in {precision})",
        f"- date: {time.strftime('%Y-%m-%d')}",
        "",
        "| what | plain (volumes/s) | ours (volumes/s) | speed-up | goal |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {what} | {p:.2f} | {o:.2f} | {o / p:.2f}× | ≥ {goal}× {'met' if o / p >= goal else 'missed'} |"
              for what, p, o, goal in results]
    return lines


if __name__ == "__main__":
    main()
