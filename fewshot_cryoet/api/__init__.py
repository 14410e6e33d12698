"""The Python API: every ``fsc`` command is one function here, one module per verb.

Functions take plain Python values (numbers, lists, paths, method names) or objects
(:class:`SubtomogramDataset`, :class:`MethodSpec`), return data (a pandas DataFrame, a
:class:`ModelCard`, an ``optuna.Study``), raise :class:`FscError` for bad input, and report progress
through an optional :class:`~fewshot_cryoet.core.reporting.Reporter` (silent by default; the command line
passes one that draws rich progress bars)::

    from fewshot_cryoet import api
    frame = api.bench(["protonet", "xcorr"], dataset="data/synthetic", snrs=[1000], ways=[2, 4],
                      episodes=100, budget="200ep", store="results.sqlite")
    print(frame.groupby(["label", "n_way"])["accuracy"].mean())

The command line (:mod:`fewshot_cryoet.cli`) only declares options, calls one of these and prints what it returns.
"""

from __future__ import annotations

from fewshot_cryoet.api.benchmarking import (
    DEFAULT_BENCH_METHODS,
    DEFAULT_BENCH_SNRS,
    GPU_BENCH_METHODS,
    bench,
    curve_order,
    default_methods,
)
from fewshot_cryoet.api.data import (
    DEFAULT_PER_CLASS,
    DataSource,
    combine,
    data_source,
    dataset_summary,
    export,
    import_data,
    imported,
    load_templates,
    open_dataset,
    scene_config,
    show,
    simulate,
    simulate_scene,
    simulation_config,
)
from fewshot_cryoet.api.extensions import add_plugin_commands, plugin_failures
from fewshot_cryoet.api.prediction import predict
from fewshot_cryoet.api.results import bench_status, bench_table, compare, leaderboard
from fewshot_cryoet.api.specs import apply_tuned, load_method, method_specs, methods, parse_param_overrides
from fewshot_cryoet.api.training import DEFAULT_TRAINING_DATASET, train
from fewshot_cryoet.api.tuning import confirm_tuning, export_tuned, load_study, study_summary, tune
from fewshot_cryoet.api.vocabulary import (
    DEFAULT_STORAGE,
    DEFAULT_STORE,
    LEADERBOARD_EPISODES,
    OBJECTIVES,
    PRESETS,
    PRUNERS,
    SAMPLERS,
    STALE_SECONDS,
    Budget,
    FitReport,
    StoreLocation,
    locate,
    parse_snr,
    snr_label,
)
from fewshot_cryoet.api.workers import start_workers, stopped_on_exit
from fewshot_cryoet.core.devices import is_out_of_memory, out_of_memory
from fewshot_cryoet.core.environment import check_installation, pair_problem

__all__ = [
    "check_installation", "pair_problem", "is_out_of_memory", "out_of_memory",
    "Budget", "DEFAULT_BENCH_METHODS", "DEFAULT_BENCH_SNRS", "DEFAULT_TRAINING_DATASET", "GPU_BENCH_METHODS", "DEFAULT_PER_CLASS",
    "DEFAULT_STORAGE", "DEFAULT_STORE", "DataSource",
    "FitReport", "LEADERBOARD_EPISODES", "OBJECTIVES", "PRESETS", "PRUNERS", "SAMPLERS", "STALE_SECONDS",
    "StoreLocation", "add_plugin_commands", "apply_tuned", "bench", "bench_status", "bench_table", "combine", "compare",
    "confirm_tuning", "curve_order", "data_source", "default_methods", "dataset_summary", "export", "export_tuned",
    "import_data", "imported", "leaderboard", "load_method", "load_study", "load_templates", "locate",
    "method_specs", "methods", "open_dataset", "parse_param_overrides", "parse_snr", "plugin_failures",
    "predict", "scene_config", "show", "simulate", "simulate_scene", "simulation_config", "snr_label",
    "start_workers", "stopped_on_exit", "study_summary", "train", "tune",
]
