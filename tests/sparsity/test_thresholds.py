"""Thresholds zero exactly what they say: a quantile per layer or global, or k·std; bad options are refused."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.core.errors import OptionError
from onnxprune.sparsity.thresholds import Threshold, keep_masks


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"small": rng.standard_normal((20, 10)) * 0.1, "large": rng.standard_normal((40, 25))}


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.975])
def test_per_layer_quantile_zeroes_that_share_of_every_layer(sparsity):
    kept = keep_masks(weights(), Threshold(sparsity=sparsity))
    for name, values in weights().items():
        assert kept[name].shape == values.shape
        assert int((~kept[name]).sum()) == round(sparsity * values.size)
        assert np.abs(values[kept[name]]).min(initial=np.inf) >= np.abs(values[~kept[name]]).max(initial=0)


def test_global_quantile_ranks_all_layers_together():
    kept = keep_masks(weights(), Threshold(sparsity=0.8, global_scope=True))
    assert sum(int((~k).sum()) for k in kept.values()) == round(0.8 * 1200)
    assert (~kept["small"]).mean() > 0.95 > (~kept["large"]).mean()  # the small-magnitude layer goes first


def test_std_k_zeroes_weights_within_k_std():
    values = weights()
    kept = keep_masks(values, Threshold(std_k=1.0))
    for name, w in values.items():
        np.testing.assert_array_equal(kept[name], np.abs(w) > np.std(w))
    whole = np.std(np.concatenate([w.ravel() for w in values.values()]))
    kept = keep_masks(values, Threshold(std_k=0.5, global_scope=True))
    np.testing.assert_array_equal(kept["small"], np.abs(values["small"]) > 0.5 * whole)


def test_existing_zeros_stay_zero_and_no_threshold_keeps_the_rest():
    values = {"w": np.array([[0.0, 1.0], [2.0, 0.0]])}
    np.testing.assert_array_equal(keep_masks(values, Threshold())["w"], [[False, True], [True, False]])
    np.testing.assert_array_equal(keep_masks(values, Threshold(std_k=0.0))["w"], [[False, True], [True, False]])


@pytest.mark.parametrize(("options", "message"), [
    ({"sparsity": 1.5}, "sparsity 1.5 must be in [0, 1)"),
    ({"sparsity": -0.1}, "sparsity -0.1 must be in [0, 1)"),
    ({"std_k": -1.0}, "std_k -1 must be >= 0"),
    ({"sparsity": 0.5, "std_k": 1.0}, "give sparsity or std_k, not both"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(OptionError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        Threshold(**options)
