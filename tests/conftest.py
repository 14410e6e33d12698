"""Shared fixtures: tiny synthetic templates, the shared real data, small simulated data sets."""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

import pytest

from fewshot_cryoet.datasets.build import simulate_dataset
from fewshot_cryoet.datasets.simulate import SimulationConfig
from fewshot_cryoet.datasets.synthetic import synthetic_templates

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (templates and atomic models)."""
    if not (SHARED_DATA / "templates").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}: these checks need the real templates")
    return SHARED_DATA


@pytest.fixture(scope="session")
def templates():
    """Six synthetic classes at 10 Å."""
    return synthetic_templates(6, voxel_size=10.0)


@pytest.fixture(scope="session")
def paired_dataset(tmp_path_factory, templates):
    """A small tilt-series data set at SNR ∞, 1000 and 0.5 sharing the same particles."""
    out = tmp_path_factory.mktemp("data") / "paired"
    return simulate_dataset(
        templates, out, [math.inf, 1000.0, 0.5], per_class=8, config=SimulationConfig(), seed=3
    )


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The conformance kit's data set: six synthetic classes, 16³, SNR ∞ and 1 (3 test classes)."""
    from fewshot_cryoet.testing import tiny_dataset as make

    return make(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_val2_dataset(tmp_path_factory):
    """The same six classes split 2 test / 2 validation / 2 train: enough validation classes for
    validation episodes (model selection, tuning)."""
    from fewshot_cryoet.testing import tiny_dataset as make

    return make(tmp_path_factory.mktemp("tiny-val2"), validation_classes=2)


@pytest.fixture
def nan_mrc(tmp_path) -> Path:
    """A 16³ MRC file at 20 Å with one NaN voxel: unreadable input for fsc predict."""
    import mrcfile
    import numpy as np

    path = tmp_path / "nan.mrc"
    volume = np.ones((16, 16, 16), np.float32)
    volume[3, 3, 3] = np.nan
    with mrcfile.new(path) as mrc:
        mrc.set_data(volume)
        mrc.voxel_size = 20.0
    return path


@pytest.fixture
def postgres_url() -> str:
    """The PostgreSQL server of ``FSC_TEST_POSTGRES_URL`` (``.ci/run`` starts one and requires it);
    skipped where none is set up."""
    url = os.environ.get("FSC_TEST_POSTGRES_URL")
    if url is None:
        if os.environ.get("FSC_REQUIRE_POSTGRES"):
            pytest.fail("FSC_REQUIRE_POSTGRES is set but FSC_TEST_POSTGRES_URL is not")
        pytest.skip("no PostgreSQL server: set FSC_TEST_POSTGRES_URL (.ci/run starts one)")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """A results store that does not exist yet: a SQLite file, or a PostgreSQL URL whose tables go to
    a fresh schema of the test database (``search_path`` in the URL), dropped afterwards."""
    if request.param == "sqlite":
        yield str(tmp_path / "store.sqlite")
        return
    import psycopg

    url = request.getfixturevalue("postgres_url")
    schema = f"fsc_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    try:
        yield url + ("&" if "?" in url else "?") + f"options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")
