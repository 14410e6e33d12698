"""``bench``: train and score methods on identical test episodes into a results store, over SNR
levels, settings, training seeds and budget curves, alone or as one of several workers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import pandas as pd

from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.core.reporting import Reporter, as_reporter
from fewshot_cryoet.results.location import DEFAULT_STORE
from fewshot_cryoet.tuning.storage import DEFAULT_STORAGE

if TYPE_CHECKING:
    import torch

    from fewshot_cryoet.evaluation.grid import MethodSpec
from fewshot_cryoet.api.data import data_source
from fewshot_cryoet.api.specs import check_row_method, specs_of

# -- bench, train, tune ------------------------------------------------------------------------------
#: The default grid's SNR levels: the paper's 1000, and 0.02, where the best baseline on the shared
#: templates falls clearly below 0.9 at 8-way (template matching 0.83; in-mask SNR about 0.16).
DEFAULT_BENCH_SNRS: tuple[float, ...] = (1000.0, 0.02)
#: The default grid's methods on every device.
DEFAULT_BENCH_METHODS: tuple[str, ...] = ("protonet", "siamese", "xcorr", "radial")
#: Added where the grid trains on a GPU: the suite's namesake belongs in its main leaderboard, and a
#: GPU trains it in seconds, where two CPU cores would double the main job's 20 minutes.
GPU_BENCH_METHODS: tuple[str, ...] = ("cosnet/duse-decoder",)


def default_methods(device: str | torch.device = "auto") -> str:
    """The methods ``fsc bench`` runs when none are named: :data:`DEFAULT_BENCH_METHODS`, and
    :data:`GPU_BENCH_METHODS` too when ``device`` (an option's value, or a device already
    resolved) is a CUDA GPU."""
    import torch

    from fewshot_cryoet.core.devices import resolve_device

    gpu = (device if isinstance(device, torch.device) else resolve_device(device)).type == "cuda"
    return ",".join(DEFAULT_BENCH_METHODS + (GPU_BENCH_METHODS if gpu else ()))


def bench(methods: str | Sequence[str] | Sequence[MethodSpec], *, dataset=None, templates: Sequence[str | Path] = (),
          test_classes: Sequence[str] | None = None, per_class: int | None = None,
          snrs: Sequence[float] | None = None, ways: Sequence[int] = (2, 4, 6, 8), shots: Sequence[int] = (1,), queries_per_class: int = 5,
          episodes: int = 600, budget: str | Sequence[str] = "300ep", seed: int = 0, device: str = "auto",
          store: str | Path = DEFAULT_STORE, resume: bool = False, params: dict[str, dict] | None = None,
          tuned: Sequence[str] = (), storage: str = DEFAULT_STORAGE, train_dataset=None,
          allow_class_overlap: bool = False, seeds: Sequence[int] | None = None,
          models: str | Path | None = None, lease_seconds: float | None = None, crf: bool = True,
          archive: str | Path | None = None, reporter: Reporter | None = None,
          on_results: Callable[[pd.DataFrame], None] | None = None, score_batch: int | None = None,
          crf_workers: int | None = None) -> pd.DataFrame:
    """Train and score methods on identical test episodes into a results store; returns this
    run's rows (one per episode). Methods that failed are listed in ``frame.attrs["failures"]``
    (the rest of the grid completes). ``seeds`` trains each trainable method once per training
    seed; every model is scored on the same test episodes (those of ``seed``), and the leaderboard
    cell becomes the mean over seeds with an interval that counts both sources of variance.
    ``budget`` may be a list of increasing budgets: each trainable method gets a model at each, for
    accuracy-versus-budget curves (the leaderboard draws them); with episode budgets one training
    to the largest gives them all (see :func:`curve_order`).

    Cross-domain: with ``train_dataset`` (a registered name, folder or data set), methods are
    trained and selected on it and tested on ``dataset``'s test classes; rows record both data
    sets. Classes shared between the two are refused unless ``allow_class_overlap``.

    ``snrs`` None: every level of a ``dataset`` folder, or :data:`DEFAULT_BENCH_SNRS` for data
    simulated on demand.

    ``store``: a SQLite file, or a ``postgresql://`` URL that workers on several machines share.
    Every process running the same call with ``resume=True`` splits its work (trainings and
    chunks of test episodes are claimed in the store; a claim lapses ``lease_seconds`` after its
    holder's last heartbeat). ``models``: the checkpoint folder (default beside a SQLite store),
    which those processes must share.

    ``crf`` False skips the dense CRF of segmenting methods: CRF Dice stays empty, accuracy and
    raw Dice are the same, and scoring takes a fraction of the time. A cell is scored with the
    CRF or without it throughout; resuming it the other way is refused.

    ``score_batch``: the most volumes a method computes at once while scoring a chunk of test
    episodes together (0: episode by episode); ``crf_workers``: processes refining masks with the
    CRF. None: the device's defaults (``evaluation.grid.SCORE_BATCH_AUTO``, ``auto_crf_workers``):
    on a CPU device episode by episode with the CRF in this process, as every earlier run, so
    CPU results stay identical; on an accelerator, 256 volumes per call and the idle cores for the
    CRF. Neither changes which episodes are scored or the CRF's masks.

    ``archive``: a folder (:mod:`~fewshot_cryoet.results.archive`) that receives each model's
    cells once all are scored, and whose cells are loaded into the store first, so that a run
    carried by machines that do not keep their disks continues from a committed folder.

    ``on_results``: called with this run's rows stored so far when the first leaderboard row (a
    configuration at every training seed, at one level) is complete, and each time the grid moves
    on to its next SNR level with new rows, but not at the end (the caller has the whole frame
    then); so a long grid shows a first table long before its end. With several processes on one
    grid, cells that another process still holds may be partial."""
    from fewshot_cryoet.core.types import Budget
    from fewshot_cryoet.datasets.dataset import snr_label
    from fewshot_cryoet.evaluation.grid import BenchSettings, Level
    from fewshot_cryoet.evaluation.runner import Runner
    from fewshot_cryoet.results.archive import ResultsArchive
    from fewshot_cryoet.results.store import STALE_SECONDS, ResultsStore

    specs = specs_of(methods, params, tuned, storage)
    if episodes < 1 or queries_per_class < 1:
        raise SettingError("episodes", "episodes and queries_per_class must be ≥ 1")
    budgets = Budget.parse_list([budget] if isinstance(budget, str) else list(budget))
    settings = BenchSettings(ways=list(ways), shots=list(shots), queries=queries_per_class, episodes=episodes,
                             budget=budgets[0], seed=seed, device=device,
                             train_seeds=list(seeds) if seeds is not None else None, crf=crf,
                             score_batch=score_batch, crf_workers=crf_workers)
    settings.torch_device  # validate the device now
    source = data_source(dataset, templates, per_class, test_classes)
    if snrs is None:
        snrs = source.fixed.snr_levels if source.fixed is not None else DEFAULT_BENCH_SNRS
    if source.fixed is not None:
        missing = [snr_label(s) for s in snrs if snr_label(s) not in source.fixed.snr_labels]
        if missing:
            raise SettingError("snr", f"snr {', '.join(missing)}: {source.fixed.path} has no SNR {', '.join(missing)} "
                                      f"(it has {', '.join(source.fixed.snr_labels)})")
    train_source = data_source(train_dataset) if train_dataset is not None else None
    kept = ResultsArchive(archive) if archive is not None else None  # a foreign folder is refused first
    results = ResultsStore(store, lease_seconds=STALE_SECONDS if lease_seconds is None else lease_seconds)
    try:
        failures = []
        if kept is not None:
            loaded = kept.load_into(results, check_row_method)
            as_reporter(reporter).log(f"archive {kept.folder}: {len(loaded.added)} finished cells loaded into "
                                      f"{results.name}, {len(loaded.already)} already there")
        def rows(levels: Sequence[float]) -> pd.DataFrame:
            return results.frame(label=sorted({spec.label for spec in specs}), snr=[snr_label(s) for s in levels],
                                 seed=seed, dataset=source.name,
                                 train_dataset=train_source.name if train_source is not None else "")

        shown = {"rows": 0, "first": False}

        def show(levels: Sequence[float]) -> None:
            """Hand the rows so far to ``on_results``, unless none were added since the last time."""
            if on_results is None:
                return
            so_far = rows(levels)
            if len(so_far) > shown["rows"]:
                shown["rows"] = len(so_far)
                on_results(so_far)

        def first_row(snr: float) -> None:
            if not shown["first"]:
                shown["first"] = True
                show(snrs[:list(snrs).index(snr) + 1])

        def level(index: int) -> Level:  # the data of a level are loaded when a process gets there
            def load():
                if index:
                    show(snrs[:index])
                return (source.at(snrs[index], reporter),
                        train_source.at(snrs[index], reporter) if train_source is not None else None)
            return snrs[index], load

        for step, (each, smaller) in enumerate(curve_order(budgets)):  # training-free: scored once, first
            runner = Runner(results, replace(settings, budget=each, snapshot_budgets=smaller), reporter, resume,
                            models_dir=models, archive=kept, on_configuration_done=first_row)
            runner.run_levels(specs if step == 0 else [s for s in specs if s.cls.trainable],
                              [level(i) for i in range(len(snrs))], source.name,
                              train_source.name if train_source is not None else "", allow_class_overlap)
            runner.archive_finished()  # models other processes finished last
            failures += runner.failures
        frame = rows(snrs)
    finally:
        results.close()
    frame.attrs["failures"] = failures
    return frame


def curve_order(budgets: list) -> list[tuple]:
    """(budget, smaller budgets its training should also leave) in the order a budget curve is
    run. Episode budgets run largest first, and that training keeps the models of the smaller
    ones on its way (``FitContext.snapshots``: the same models a training of each would select),
    so the curve costs its largest budget instead of the sum; the smaller runs reuse them. Time
    budgets end at a moment, not a step, so each is trained on its own, smallest first."""
    if len(budgets) > 1 and all(b.minutes is None and b.episodes is not None for b in budgets):
        return [(budgets[-1], list(budgets[:-1]))] + [(b, []) for b in budgets[:-1]]
    return [(b, []) for b in budgets]
