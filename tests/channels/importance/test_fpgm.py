"""FPGM: a filter's summed distance to the other filters of its layer, summed over the group's producers."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.channels import importance
from onnxprune.channels.importance import FPGM
from onnxprune.core.errors import InputError
from tests.channels.importance.test_criteria import chain, residual, scores

# Four 1x1 filters over 2 input channels: filter 2 duplicates filter 0.
FOUR = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 0.0], [0.0, 4.0]]).reshape(4, 2, 1, 1)


def test_hand_computed_four_filters_duplicate_ranks_lowest():
    """L2: d01 = 3, d03 = 4, d13 = 5, d02 = 0, so I = [7, 11, 7, 13]: both copies are the median."""
    values = scores(FPGM(), chain(FOUR))
    np.testing.assert_allclose(values, [7.0, 11.0, 7.0, 13.0], rtol=1e-12)
    assert set(np.argsort(values)[:2]) == {0, 2}


def test_l1_distances():
    """L1: d01 = 3, d03 = 4, d13 = 7: I = [7, 13, 7, 15]."""
    np.testing.assert_allclose(scores(FPGM(p=1), chain(FOUR)), [7.0, 13.0, 7.0, 15.0], rtol=1e-12)


def test_matches_direct_pairwise_sum():
    weight = np.random.default_rng(0).standard_normal((6, 3, 3, 3)).astype(np.float32)
    rows = weight.reshape(6, -1).astype(np.float64)
    expected = np.linalg.norm(rows[:, None] - rows[None], axis=2).sum(axis=1)
    np.testing.assert_allclose(scores(FPGM(), chain(weight)), expected, rtol=1e-9)


def test_sums_over_producers_of_a_residual_group():
    rng = np.random.default_rng(1)
    wa = rng.standard_normal((5, 3, 1, 1)).astype(np.float32)
    wb = rng.standard_normal((5, 3, 1, 1)).astype(np.float32)

    def direct(w):
        rows = w.reshape(5, -1).astype(np.float64)
        return np.linalg.norm(rows[:, None] - rows[None], axis=2).sum(axis=1)

    np.testing.assert_allclose(scores(FPGM(), residual(wa, wb), "conv_a.w"), direct(wa) + direct(wb), rtol=1e-9)


def test_registered_data_free():
    assert isinstance(importance.make("fpgm"), FPGM)
    assert importance.make("fpgm", p=1).p == 1
    assert not importance.needs_data("fpgm")
    with pytest.raises(InputError, match="p must be at least 1"):
        importance.make("fpgm", p=0.5)
