"""Fair, budgeted, resumable hyper-parameter searches with Optuna (``fsc tune``).

Every method declares its search space (:meth:`FewShotMethod.search_space`, which takes an
``optuna.Trial``). A trial trains the method on training classes with the same budget and the same
validation-class model selection as ``fsc bench``, reports its selection score while training (so
pruners stop bad trials early), then is scored on fixed validation-class episodes. The test split
is never read.

Studies live in an Optuna storage (SQLite file or any SQLAlchemy URL such as PostgreSQL), so
``optuna-dashboard`` reads them as they are, several workers on several machines share one study,
and running the same command again resumes it: ``--trials`` counts finished trials in the whole
study. A trial interrupted by Ctrl-C is marked failed at once; one whose process was killed is
marked failed by the next worker once its heartbeat is older than :data:`GRACE_SECONDS`.

The study remembers what it tunes (method, variant, objective, data, budget, episodes) and a run
that asks for something else is refused, so trials of different experiments never mix.
"""

from fewshot_cryoet.tuning.objective import SafeInterrupt, TuningObjective, run_study
from fewshot_cryoet.tuning.storage import (
    DEFAULT_STORAGE,
    GRACE_SECONDS,
    HEARTBEAT_SECONDS,
    open_storage,
    safe_url,
)
from fewshot_cryoet.tuning.study import (
    OBJECTIVES,
    PARAMS_FORMAT,
    PRUNERS,
    SAMPLERS,
    TunedParams,
    TuneSettings,
    best_trial,
    default_study_name,
    enqueue_defaults,
    finished_trials,
    grid_from_distributions,
    load_params_file,
    load_study,
    make_pruner,
    make_sampler,
    open_study,
    parse_timeout,
    probe_search_space,
    resolve_params,
    sampler_seed,
    tuned_params,
)

__all__ = [
    "DEFAULT_STORAGE", "GRACE_SECONDS", "HEARTBEAT_SECONDS", "OBJECTIVES", "PARAMS_FORMAT", "PRUNERS", "SAMPLERS",
    "SafeInterrupt", "TunedParams", "TuneSettings", "TuningObjective", "best_trial", "default_study_name",
    "enqueue_defaults", "finished_trials", "grid_from_distributions", "load_params_file", "load_study",
    "make_pruner", "make_sampler", "open_storage", "open_study", "parse_timeout", "probe_search_space",
    "resolve_params", "run_study", "safe_url", "sampler_seed", "tuned_params",
]
