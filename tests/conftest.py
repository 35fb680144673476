"""Session-wide test settings: the layer latency table is cached in a temporary folder, not in ~/.cache."""

from __future__ import annotations

import pytest

from onnxprune.measure.latency_table import CACHE_ENV


@pytest.fixture(autouse=True, scope="session")
def latency_cache(tmp_path_factory: pytest.TempPathFactory):
    """One cache for the whole run (each layer shape timed once), gone with the run's temp folders."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("latency-cache")))
        yield
