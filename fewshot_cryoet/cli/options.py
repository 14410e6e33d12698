"""What every ``fsc`` command shares: option decorators (one name per concept) and the parsers of
list and range options. Terminal output lives in ``terminal``."""

from __future__ import annotations

import re
from pathlib import Path

import click

from fewshot_cryoet import api
from fewshot_cryoet.core.errors import FscError


def parse_list(text: str | None, option: str, cast=str) -> list | None:
    """``"2,4,6"`` → ``[2, 4, 6]``; None stays None."""
    if text is None:
        return None
    try:
        values = [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FscError(f"{option} {text!r}: expected a comma-separated list such as 2,4,6,8") from None
    if not values:
        raise FscError(f"{option} is empty")
    return values


def parse_range(text: str, option: str, cast=float) -> tuple:
    """``"2..6"`` (as every range option writes it), ``"2-6"`` or ``"-60,60"`` → (low, high);
    ``"3"`` → (3, 3)."""
    if ".." in text:
        text = text.replace("..", ",", 1)
    match = re.fullmatch(r"\s*(-?[\d.]+)\s*(?:[-,]\s*(-?[\d.]+)\s*)?", text)
    try:
        low = cast(match.group(1))
        high = cast(match.group(2)) if match.group(2) is not None else low
    except (AttributeError, ValueError):
        raise FscError(f"{option} {text!r}: expected a number or a range such as 2..6 or -60..60") from None
    if low > high:
        raise FscError(f"{option} {text!r}: expected a range low-high with low ≤ high")
    return low, high


def parse_value_or_range(text: str, option: str):
    """``"0.07"`` → 0.07; ``"0.05..0.2"`` or ``"0.05-0.2"`` → (0.05, 0.2): a setting drawn per particle."""
    if ".." in text:
        parts = text.split("..")
        try:
            low, high = (float(p) for p in parts)
        except ValueError:
            raise FscError(f"{option} {text!r}: expected a number or a range such as 2..6 or -70..-50") from None
        if low > high:
            raise FscError(f"{option} {text!r}: expected a range low..high with low ≤ high")
    else:
        low, high = parse_range(text, option)
    return low if low == high else (low, high)


def method_params(param_texts, method: str | None) -> dict | None:
    """The --param overrides of the one method a command runs; others are refused, not ignored."""
    overrides = api.parse_param_overrides(param_texts)
    name = (method or "").split("/", 1)[0]
    strays = sorted(set(overrides) - {name})
    if strays:
        raise FscError(f"--param for {', '.join(strays)}, which this command does not run "
                       f"({name or 'no --method given'})")
    return overrides.get(name)


def snrs(texts) -> list[float]:
    return [api.parse_snr(t) for t in texts]


def _stack(*decorators):
    def apply(function):
        for decorator in reversed(decorators):
            function = decorator(function)
        return function
    return apply


def data_options_for(dataset_default: str, per_class_default: str):
    """Where the data come from: --dataset or --templates (+ --test-classes, --per-class), with
    the defaults of the command they decorate."""
    def apply(function):
        return _stack(
            click.option("--dataset", default=None,
                         help=f"Registered data set name or a data set folder [default: {dataset_default}]."),
            click.option("--templates", "templates", multiple=True, metavar="DIR|FILE|synthetic:N",
                         help="Simulate from these density maps or atomic models instead, with synthetic:N built-in "
                              "classes mixed in if listed; repeatable."),
            click.option("--test-classes", default=None,
                         help="With --templates: comma-separated classes held out for testing."),
            click.option("--per-class", type=click.IntRange(min=1), default=None,
                         help=f"Subtomograms per class when the data are simulated on demand [default: {per_class_default}]."),
        )(function)
    return apply


data_options = data_options_for("synthetic", "100")


def method_options(single: bool):
    """--method (one) or --methods (several), --param overrides, tuned --params and their --storage."""
    def apply(function):
        which = (click.option("--method", "methods", required=True, help="Method, optionally METHOD/VARIANT.")
                 if single else
                 click.option("--methods", "methods", default=None,
                              help="Comma-separated methods, optionally NAME/VARIANT. [default: "
                                   f"{','.join(api.DEFAULT_BENCH_METHODS)}; on a GPU also "
                                   f"{','.join(api.GPU_BENCH_METHODS)}]"))
        return _stack(
            which,
            click.option("--param", "param_texts", multiple=True, metavar="METHOD.KEY=VALUE",
                         help="Hyper-parameter override; repeatable."),
            click.option("--params", "tuned", multiple=not single, default=None, metavar="best:STUDY|FILE",
                         help="Tuned hyper-parameters: a study's best trial (in --storage) or a file from "
                              "fsc tune export."),
            storage_option,
        )(function)
    return apply


storage_option = click.option(
    "--storage", "--tune-storage", "storage", default=api.DEFAULT_STORAGE, show_default=True,
    help="Optuna storage of tuning studies: sqlite:///FILE or postgresql://user:password@host/db "
         "(--tune-storage is the old spelling).")


def store_option(help: str):
    """--store: a SQLite file or a PostgreSQL URL (kept as text: a path type would fold the URL's ``//``)."""
    return click.option("--store", default=api.DEFAULT_STORE, show_default=True, metavar="FILE|URL",
                        help=help + " A SQLite file, or postgresql://user:password@host/db shared by workers on "
                                    "several machines (the password is never printed).")


device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")


def run_options(function):
    """--seed, --device."""
    return _stack(
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of everything random."),
        device_option,
    )(function)


def queries_per_class_option(function):
    return click.option("--queries-per-class", "--queries", "queries_per_class", type=click.IntRange(min=1), default=5,
                        show_default=True, help="Query subtomograms per class per episode "
                                                "(--queries is the old spelling).")(function)


def out_options(what: str, required: bool = True, default: Path | None = None):
    def apply(function):
        return _stack(
            click.option("--out", type=click.Path(path_type=Path), required=required, default=default,
                         help=f"{what} to write."),
            click.option("--overwrite", is_flag=True, help=f"Replace {what.lower()} written earlier by fsc."),
        )(function)
    return apply
