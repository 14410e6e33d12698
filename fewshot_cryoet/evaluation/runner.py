"""The shared episode runner: every method trained and scored the same way on the same episodes.

For each SNR level: the data set's fixed test episodes are drawn for every (N, K) setting (and
validated) before any training; each method is fitted on training classes with validation-class
episodes for model selection (its checkpoint kept beside the store, so a resumed run does not
train again), then scored episode by episode, each result committed to the store at once.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterable

import torch

from fewshot_cryoet.core.devices import is_out_of_memory, out_of_memory, resolve_device
from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.outputs import write_json
from fewshot_cryoet.core.reporting import Reporter, as_reporter
from fewshot_cryoet.core.types import Budget, FitReport
from fewshot_cryoet.core.version import __version__
from fewshot_cryoet.datasets.dataset import SubtomogramDataset, snr_label
from fewshot_cryoet.episodes import EpisodeSet, load_episode
from fewshot_cryoet.evaluation.fitting import (
    VALIDATION_EPISODES,
    check_domains,
    fit_context,
    fit_data,
    training_task,
    validation_episodes,
)
from fewshot_cryoet.evaluation.grid import (
    EVAL_CHUNK,
    BenchSettings,
    EvalPlan,
    Job,
    Level,
    MethodSpec,
    chunk_identity,
    fit_identity,
    test_episode_sets,
)
from fewshot_cryoet.evaluation.scoring import Scorer
from fewshot_cryoet.methods.base import FewShotMethod
from fewshot_cryoet.models.checkpoints import file_hash
from fewshot_cryoet.models.training_state import TrainingStateFile
from fewshot_cryoet.results.archive import ResultsArchive
from fewshot_cryoet.results.store import Cell, ResultsStore

#: How often a process waiting for another's training checks the store (seconds).
CLAIM_POLL_SECONDS = 2.0


__all__ = [  # the grid's parts live in evaluation.grid and evaluation.fitting; importable here too
    "CLAIM_POLL_SECONDS", "EVAL_CHUNK", "VALIDATION_EPISODES", "BenchSettings", "EvalPlan", "Job", "Level",
    "MethodSpec", "Runner", "check_domains", "chunk_identity", "fit_context", "fit_data", "fit_identity",
    "resolve_device", "test_episode_sets", "validation_episodes",
]


class Runner:
    """Runs a benchmark grid into a results store."""

    def __init__(self, store: ResultsStore, settings: BenchSettings, reporter: Reporter | None = None,
                 resume: bool = False, models_dir: str | Path | None = None,
                 archive: ResultsArchive | None = None,
                 on_configuration_done: Callable[[float], None] | None = None) -> None:
        self.store = store
        #: Told the SNR level each time a configuration (a row of the leaderboard: every training
        #: seed of one method at one level) has all its cells scored here, so a caller can show
        #: results long before the grid ends.
        self.on_configuration_done = on_configuration_done
        #: Where each model's cells are copied once all are scored (``--archive``), so that a run
        #: continues from them on another machine.
        self.archive = archive
        self.settings = settings
        self.reporter = as_reporter(reporter)
        self.log = self.reporter.log
        self.resume = resume
        self.device = settings.torch_device
        #: Checkpoints of trained models: beside a SQLite store by default; workers of one grid on
        #: several machines must share one folder (``--models``), which is checked by checkpoint hash.
        self.models_dir = Path(models_dir) if models_dir is not None else store.location.sibling(".models")
        self._scorers: dict[int, Scorer] = {}  # per method: its CRF cache spans every cell
        self._announced: set[str] = set()  # trainings said to be another worker's
        self._warned: set[str] = set()  # warnings about the data, said once
        self._started = time.monotonic()  # when the current run began (see run_levels)
        self.failures: list[str] = []
        self._grid = None  # the whole grid's bar: models trained and scored (see run_levels)
        self._levels_left = 0  # SNR levels of the grid not yet reached (see run_levels)

    def cells(self, spec: MethodSpec, method: FewShotMethod, dataset: SubtomogramDataset, dataset_name: str,
              snr: float, train: SubtomogramDataset | None = None, train_name: str = "",
              train_seed: int | None = None) -> dict[tuple[int, int], Cell]:
        train_seed = None if not method.trainable or train_seed in (None, self.settings.seed) else train_seed
        return {
            (n, k): Cell(
                method=method.name, variant=method.variant, label=spec.label or method.label,
                params_hash=method.params_hash(), params=json.dumps(method.params, sort_keys=True, default=str),
                profile=str(method.params.get("profile", "")),
                budget=str(self.settings.budget) if method.trainable else "",
                dataset=dataset_name, dataset_hash=dataset.content_hash, snr=snr_label(snr),
                n_way=n, k_shot=k, q_query=self.settings.queries, seed=self.settings.seed,
                train_dataset=train_name if train is not None else "",
                train_dataset_hash=train.content_hash if train is not None else "",
                train_seed=train_seed,
            )
            for n in self.settings.ways for k in self.settings.shots
        }

    def check_fresh(self, cells: list[Cell]) -> None:
        """Without --resume, refuse to add to cells that already have results."""
        if self.resume:
            return
        done = sum(len(self.store.done_episodes(c)) for c in cells)
        if done:
            raise FscError(
                f"{self.store.name}: already holds {done} episodes of this run; continue it with resume "
                "(--resume) or choose another store"
            )

    def run_snr(self, specs: list[MethodSpec], dataset: SubtomogramDataset, dataset_name: str, snr: float,
                train: SubtomogramDataset | None = None, train_name: str = "",
                allow_class_overlap: bool = False) -> None:
        """Fit and evaluate every method at one SNR level of ``dataset``. With ``train`` (cross-domain),
        methods are trained and selected on ``train`` and tested on ``dataset``'s test classes."""
        self.run_levels(specs, [(snr, lambda: (dataset, train))], dataset_name, train_name, allow_class_overlap)

    def run_levels(self, specs: list[MethodSpec], levels: Iterable[Level], dataset_name: str, train_name: str = "",
                   allow_class_overlap: bool = False) -> None:
        """Fit and evaluate every method at each SNR level, as one work list.

        Why not level after level: with several processes on one grid, the last training of a level
        would keep every other process waiting for it (an hour for a paper-profile COS-Net with a
        decoder). A process moves on to the next level, loading its data then, as soon as all that
        is left at the levels it has reached is held by others.

        Why a process keeps to its own models: a model's test episodes share their volumes, so the
        process that scored some of them has their embeddings (and a decoder's masks) cached, and
        another process joining the same model computes them all again. A model that another
        process trained during this run is therefore left to that process, which scores it next,
        while there is other work; it is joined only when nothing else is left."""
        self._started = time.monotonic()
        levels = list(levels)
        models = sum(len(self.settings.training_seeds) if spec.cls.trainable else 1 for spec in specs)
        self._grid = self.reporter.task(  # one bar for the whole grid, so a person sees how far it is
            f"grid: models trained and scored ({len(levels)} SNR level(s), budget {self.settings.budget})",
            total=models * len(levels))
        try:
            pending = iter(levels)
            self._levels_left = len(levels)
            jobs: list[Job] = []
            while True:
                if self._pass(jobs, join=False):
                    continue
                level = next(pending, None)
                if level is not None:
                    self._levels_left -= 1
                    snr, load = level
                    dataset, train = load()
                    jobs += self._jobs(specs, dataset, dataset_name, snr, train, train_name, allow_class_overlap)
                    continue
                if not jobs:
                    return
                # Everything left is held by others, or is a model another process trained and scores:
                # help with it, or wait until its claim is done or lapses.
                if not self._pass(jobs, join=True):
                    time.sleep(CLAIM_POLL_SECONDS)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the CRF processes of this run's scorers (they are started again if it goes on)."""
        for scorer in self._scorers.values():
            scorer.close()

    def _jobs(self, specs: list[MethodSpec], dataset: SubtomogramDataset, dataset_name: str, snr: float,
              train: SubtomogramDataset | None, train_name: str, allow_class_overlap: bool) -> list[Job]:
        """The models of one SNR level still to train or score, after the checks that refuse bad
        input before any work there."""
        settings = self.settings
        dataset.check()  # an edited manifest or damaged files are refused before any training
        self.store.record_snr_level(dataset.content_hash, snr_label(snr), dataset.mask_snr(snr))
        if train is not None:
            train.check()
            check_domains(train, dataset, allow_class_overlap)
        test_sets = test_episode_sets(dataset, settings)  # validates N and K+Q before training
        methods = []  # one instance per training seed of a trainable method (each trains its own model)
        for spec in specs:
            cls_seeds = settings.training_seeds if spec.cls.trainable else [settings.seed]
            methods += [(spec, spec.cls(spec.params, spec.variant, self.device), s) for s in cls_seeds]
        all_cells = {id(m): self.cells(spec, m, dataset, dataset_name, snr, train, train_name, s)
                     for spec, m, s in methods}
        self.check_fresh([c for cells in all_cells.values() for c in cells.values()])
        self.store.plan([c for cells in all_cells.values() for c in cells.values()], settings.episodes)
        jobs = []
        for spec, method, train_seed in methods:
            cells = all_cells[id(method)]
            where = f"{method.label}" + (f" (training seed {train_seed})" if len(settings.training_seeds) > 1
                                         and method.trainable else "")
            plans = [EvalPlan(cell, test_sets[key], self.store.done_episodes(cell), settings.episodes)
                     for key, cell in cells.items()]
            if all(plan.complete for plan in plans):
                self.log(f"{where} at SNR {snr_label(snr)}: already complete")
                continue
            jobs.append(Job(spec, method, train_seed, cells, [p for p in plans if not p.complete], where, snr,
                            dataset, train))
        if self._grid is not None:
            self._grid.advance(len(methods) - len(jobs))  # models this store already holds whole
        return jobs

    def _pass(self, jobs: list[Job], join: bool) -> bool:
        """One pass over the work list without waiting; finished jobs leave it. Models already
        loaded here come first (their caches are warm). Returns whether anything progressed."""
        progressed = False
        for job in sorted(jobs, key=lambda j: j.fitted is None):
            try:
                finished, moved = self._advance(job, join)
            except (FscError, torch.OutOfMemoryError) as exc:  # one method's failure must not stop the grid
                if is_out_of_memory(exc):  # its rows so far are stored; a smaller setting resumes the rest
                    exc = out_of_memory("", "bench")
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                self.failures.append(f"{job.where} at SNR {snr_label(job.snr)}: {exc}")
                self.log(f"skipped {self.failures[-1]}")
                finished, moved = True, True
            progressed |= moved
            if finished:
                jobs.remove(job)
                if self._grid is not None:
                    self._grid.advance()
                self.archive_finished()
                same_row = [j for j in jobs if j.spec.label == job.spec.label and j.snr == job.snr]
                if self.on_configuration_done is not None and not same_row and (jobs or self._levels_left):
                    self.on_configuration_done(job.snr)  # not after the last: the caller shows the whole grid then
        return progressed

    def archive_finished(self) -> None:
        """Copy the models finished so far (by any process on this store) into the archive."""
        if self.archive is None:
            return
        for cell in self.archive.save_finished(self.store).added:
            self.log(f"archived cell {cell} in {self.archive.folder}")

    def _advance(self, job: Job, join: bool) -> tuple[bool, bool]:
        """One pass over a job without waiting: (finished, made progress). ``join`` False leaves
        a model another process trained during this run to that process (see :meth:`run_levels`)."""
        moved = False
        if job.fitted is None:
            job.fitted = self.fit(job.method, job.train if job.train is not None else job.dataset, job.snr, job.cells,
                                  job.train_seed, join)
            if job.fitted is None:
                return False, False  # another worker trains it, or trained it and scores it
            moved = True
            self._settle_finished_chunks(job.cells.values(), job.fitted[1])
        report, checkpoint = job.fitted
        for plan in job.plans:
            if not plan.complete:
                moved |= self.evaluate(job.method, job.spec, job.dataset, job.snr, plan, report, checkpoint)
        return all(plan.complete for plan in job.plans), moved

    def fit(self, method: FewShotMethod, dataset: SubtomogramDataset, snr: float,
            cells: dict[tuple[int, int], Cell], train_seed: int | None = None,
            join: bool = True) -> tuple[FitReport, str | None] | None:
        """(fit report, checkpoint hash): trains the method on ``dataset`` (the training domain) once
        per store, whatever the number of processes running the same grid, and whatever the number
        of domains it is then tested on. The first process claims the fit in the store and
        trains it (a heartbeat keeps the claim); the others reuse its checkpoint, saying so. While
        another process trains it, this returns None at once, so the caller does other work and
        asks again; so it does with ``join`` False for a model another process finished during
        this run. A crashed trainer's claim goes stale and is taken over."""
        if not method.trainable:
            return FitReport(), None
        any_cell = next(iter(cells.values()))
        seed = self.settings.seed if train_seed is None else train_seed
        identity = fit_identity(any_cell, any_cell.budget, seed)
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FscError(f"{self.models_dir}: cannot create the checkpoint folder ({exc.strerror}); "
                           "choose another --models folder or --store") from None
        checkpoint = self._checkpoint_path(identity)
        report_path = checkpoint.with_suffix(".json")
        where = f"{method.label} at SNR {snr_label(snr)}" + (
            f", training seed {seed}" if train_seed not in (None, self.settings.seed) else "")
        while True:
            claim = self.store.claim(identity)
            if claim.state == "mine" and checkpoint.exists() and report_path.exists():
                # trained by a version that kept no claims, or by a process stopped between writing the
                # model and recording it: record it as this store's fit
                self.store.finish(identity, file_hash(checkpoint), json.loads(report_path.read_text()))
                TrainingStateFile(self._training_state_path(identity), identity).remove()
                continue
            if claim.state == "done":
                if not join and claim.owner != self.store.owner and claim.age < time.monotonic() - self._started:
                    return None  # another process trained it during this run and is scoring it now
                if not checkpoint.exists() or file_hash(checkpoint) != claim.checkpoint_hash:
                    found = "missing" if not checkpoint.exists() else f"hashes to {file_hash(checkpoint)}"
                    raise FscError(f"{checkpoint}: {found}, but {claim.owner} trained it with hash "
                                   f"{claim.checkpoint_hash} (recorded in {self.store.name}); every worker of one store "
                                   f"must use the same --models folder (this one uses {self.models_dir}); to train "
                                   "again, use a new store")
                method.load(checkpoint, dataset.box)
                self.log(f"{where}: reusing the model trained "
                         f"{'just now by ' + claim.owner if identity in self._announced else 'earlier'} "
                         f"({checkpoint.name})")
                return FitReport.from_dict(claim.report or {}), claim.checkpoint_hash
            if claim.state == "busy":
                if identity not in self._announced:
                    self.log(f"{where}: another process ({claim.owner}) is training this model; doing other work "
                             f"meanwhile (its claim lapses {self.store.lease_seconds:.0f} s after its last heartbeat)")
                    self._announced.add(identity)
                return None
            break
        resume = TrainingStateFile(self._training_state_path(identity), identity, lambda text: self.log(f"{where}: {text}"))
        try:
            with self.store.heartbeat(identity):
                report = self._train(method, dataset, snr, seed, self._snapshot_saver(method, dataset, any_cell, seed),
                                     resume)
                digest = self._write_model(method, dataset.box, identity, report)
                resume.remove()
        except BaseException:
            self.store.release(identity)
            raise
        self.store.finish(identity, digest, asdict(report))
        self.log(f"{where}: {report.describe()}")
        return report, digest

    def _checkpoint_path(self, identity: str) -> Path:
        return self.models_dir / (identity.replace(",", "_") + ".pt")

    def _training_state_path(self, identity: str) -> Path:
        """Beside the checkpoint: the state an interrupted training resumes from (any worker of the
        store may take over a lapsed claim, and they share the models folder)."""
        return self.models_dir / (identity.replace(",", "_") + ".training.pt")

    def _write_model(self, method: FewShotMethod, box: int, identity: str, report: FitReport) -> str:
        """A training's checkpoint and, beside it, its report (read back when a later version finds
        the checkpoint without a claim); returns the checkpoint's hash."""
        checkpoint = self._checkpoint_path(identity)
        digest = method.save(checkpoint, box)
        write_json(checkpoint.with_suffix(".json"), asdict(report))
        return digest

    def _snapshot_saver(self, method: FewShotMethod, dataset: SubtomogramDataset, cell: Cell, seed: int):
        """The ``FitContext.snapshot`` callback: records the model of a smaller budget of the curve
        as that budget's own training (checkpoint, report and a finished claim), unless it was
        trained already or another process is training it."""
        def save(step: int, report: FitReport) -> None:
            identity = fit_identity(cell, str(Budget(episodes=step)), seed)
            if self.store.claim(identity).state != "mine":
                return
            try:
                digest = self._write_model(method, dataset.box, identity, report)
            except BaseException:
                self.store.release(identity)
                raise
            self.store.finish(identity, digest, asdict(report))
            self.log(f"{method.label} at SNR {cell.snr}, training seed {seed}: the {step}ep model of the budget "
                     f"curve, kept from this training ({report.describe()})")
        return save

    def _train(self, method: FewShotMethod, dataset: SubtomogramDataset, snr: float, seed: int,
               snapshot=None, resume: TrainingStateFile | None = None) -> FitReport:
        settings = self.settings
        task, progress = training_task(self.reporter, f"train {method.label} SNR {snr_label(snr)} seed {seed}",
                                       settings.budget)
        context = fit_context(dataset, snr, method.segments, settings.budget, self.device, settings.queries,
                              seed, settings.shots[0], progress=progress, warn=self._warn_once)
        if snapshot is not None and settings.snapshot_budgets:
            context = replace(context, snapshots=tuple(b.episodes for b in settings.snapshot_budgets), snapshot=snapshot)
        report = method.fit(replace(context, resume=resume))
        task.update(task.total)
        return report

    def _warn_once(self, message: str) -> None:
        """A warning about the data, said once per run however many models train on them."""
        if message not in self._warned:
            self._warned.add(message)
            self.log(message)

    def evaluate(self, method: FewShotMethod, spec: MethodSpec, dataset: SubtomogramDataset, snr: float,
                 plan: EvalPlan, report: FitReport, checkpoint: str | None = None) -> bool:
        """One pass over a cell's chunks of missing test episodes: each chunk not held by another
        worker is claimed and scored, each episode committed at once with the checkpoint hash of
        the fit that produced it. Returns whether any chunk was finished here or found finished;
        ``plan`` keeps what is left. Refuses to add to rows scored with another fit."""
        cell, episodes = plan.cell, plan.episodes
        other = self.store.checkpoints(cell) - {checkpoint}
        if other:
            raise FscError(f"{self.store.name}: this cell's stored episodes were scored with another trained model "
                           f"(checkpoint {', '.join(sorted(other))}, now {checkpoint}); use a new store")
        refined = self.store.crf_refined(cell) if method.segments else None
        if refined is not None and refined != self.settings.crf:  # a cell's CRF Dice covers all its episodes or none
            raise FscError(f"{self.store.name}: this cell's stored episodes of {method.label} were scored "
                           + ("with the CRF; resume without --no-crf" if refined else
                              "without the CRF (--no-crf); resume with --no-crf") + ", or use a new store")
        if plan.task is None:
            plan.task = self.reporter.task(f"eval {method.label} {cell.n_way}-way {cell.k_shot}-shot SNR {cell.snr}",
                                           total=len(episodes), completed=len(episodes) - plan.missing)
        crf = method.crf_params() if method.segments and self.settings.crf else None
        if id(method) not in self._scorers:
            self._scorers[id(method)] = Scorer(crf, self.log, method.temperature, self.settings.crf_processes)
        scorer = self._scorers[id(method)]
        # Episodes in chunks, each claimed in the store, so processes running the same grid
        # (fsc bench --workers N, or the same command started on several machines) split the
        # work; a killed worker's chunk goes stale and is taken over, its stored episodes kept.
        # Chunks are fixed blocks of episode numbers, so every process names the same chunk alike.
        moved = False
        for start, chunk in list(plan.chunks.items()):
            # named by its block of this grid's episode numbers (a resumed run asking for more
            # episodes has other blocks) and the model scoring it
            identity = chunk_identity(cell, start, min(start + EVAL_CHUNK, len(episodes)), checkpoint)
            claim = self.store.claim(identity)
            if claim.state == "busy":
                continue  # another worker's, for now
            del plan.chunks[start]
            moved = True
            if claim.state == "done":
                plan.task.advance(len(chunk))
                continue
            try:
                with self.store.heartbeat(identity):
                    done = self.store.done_episodes(cell)
                    plan.task.advance(sum(1 for number in chunk if number in done))
                    numbers = [number for number in chunk if number not in done]
                    batch = self.settings.scoring_batch
                    # Batched: the chunk's episodes predicted together (each distinct volume computed
                    # once, in large batches); else one at a time, as ever. Stored one by one either way.
                    for group in ([numbers] if batch else [[number] for number in numbers]):
                        self._score(method, spec, dataset, snr, episodes, cell, group, report, checkpoint, scorer,
                                    batch, plan.task.advance)
            except BaseException:
                self.store.release(identity)
                raise
            self.store.finish(identity)
        return moved

    def _settle_finished_chunks(self, cells, checkpoint: str | None) -> None:
        """A worker killed after storing a chunk's last episode but before marking the chunk done
        leaves a claim that no plan revisits, since nothing in it is missing. Each chunk whose
        episodes are all stored is therefore claimed as usual and marked done when the claim is
        free or its holder is gone (a live holder's is left to it), so the store's claims end
        done once the grid is."""
        wanted = self.settings.episodes
        for cell in cells:
            done = self.store.done_episodes(cell)
            for start in range(0, wanted, EVAL_CHUNK):
                end = min(start + EVAL_CHUNK, wanted)
                if all(n in done for n in range(start, end)):
                    identity = chunk_identity(cell, start, end, checkpoint)
                    if self.store.claim(identity).state == "mine":
                        self.store.finish(identity)

    def _score(self, method: FewShotMethod, spec: MethodSpec, dataset: SubtomogramDataset, snr: float,
               episodes: EpisodeSet, cell: Cell, numbers: list[int], report: FitReport, checkpoint: str | None,
               scorer: Scorer, batch: int = 0, advance: Callable[[], None] = lambda: None) -> None:
        """Predict test episodes ``numbers`` together (``FewShotMethod.predict_many``), then score
        and commit each; the time per episode is the group's over its size."""
        loaded = [load_episode(dataset, episodes, number, snr, with_masks=method.segments) for number in numbers]
        start = time.perf_counter()
        predictions = method.predict_many(loaded, batch)
        seconds = (time.perf_counter() - start) / max(len(loaded), 1)
        scorer.prefetch(loaded, predictions)  # the CRF of every query, in parallel where it has processes
        for number, episode, prediction in zip(numbers, loaded, predictions):
            result = scorer.episode(number, episode, prediction, seconds)
            self.store.add(
                cell, result, fit_seconds=report.seconds if method.trainable else None,
                fit_episodes=report.episodes if method.trainable else None,
                fit_examples=report.examples if method.trainable else None,
                val_accuracy=report.best_validation_accuracy, device=str(self.device),
                package_version=__version__, plugin=spec.origin, checkpoint=checkpoint,
            )
            advance()
