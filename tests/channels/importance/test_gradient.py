"""The taylor/gradient criteria: scores from the torch round-trip, mapped onto channel groups."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from models.architectures import export_onnx  # noqa: E402
from onnxprune import channels  # noqa: E402
from onnxprune.channels import importance  # noqa: E402
from onnxprune.core.errors import InputError  # noqa: E402
from onnxprune.core.model import to_graph  # noqa: E402
from onnxprune.passes.pipeline import prepare  # noqa: E402


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(path, x_train=rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8), y_train=rng.integers(0, 10, 16))
    return path


@pytest.mark.parametrize("mode", ["taylor", "gradient"])
def test_scores_every_prunable_group(labelled, mode):
    graph = prepare(to_graph(export_onnx("plain_chain")))
    analysis = channels.analyse(graph)
    criterion = importance.make(mode, data=str(labelled), batch_size=8)
    scores = importance.score_groups(analysis, criterion)
    assert set(scores) == {group.id for group in analysis.prunable}
    for group in analysis.prunable:
        assert scores[group.id].shape == (group.size,)
        assert np.all(np.isfinite(scores[group.id])) and np.all(scores[group.id] >= 0)
        assert scores[group.id].max() > 0


def test_needs_data():
    assert importance.needs_data("taylor") and not importance.needs_data("l1")
    with pytest.raises(InputError, match="needs labelled data"):
        importance.make("taylor")
