"""A latency target checked on onnxruntime: the policy's table proposes, the measured ratio corrects it."""

from __future__ import annotations

import logging

import pytest

from onnxprune.api import latency_target, prune_model
from onnxprune.channels.policy import PolicyConfig
from tests.channels.test_policy import network


def kept_total(selection, sizes):
    return sum(sizes[gid] - len(indices) for gid, indices in selection.items())


@pytest.fixture
def measured(monkeypatch):
    """Replace the timing by canned ratios and the layer table by a fake one; record each selection timed."""
    from onnxprune.channels import policy
    from tests.channels.test_policy import FakeTable

    monkeypatch.setattr(policy, "LatencyTable", lambda threads: FakeTable())
    timed = []

    def use(*ratios):
        answers = iter(ratios)

        def fake(model, graph_model, channel_graph, selection, feed, threads):
            timed.append(selection)
            return next(answers)

        monkeypatch.setattr(latency_target, "_measured_ratio", fake)
        return timed

    return use


@pytest.mark.parametrize(("ratios", "chosen"), [
    ((0.6, 0.405), 1),  # too slow, then within 2 % of the target: the corrected selection
    ((0.3, 0.39), 1),  # far under, then at it: the one that keeps more channels
    ((0.6, 0.55, 0.5), 2),  # never reached in 3 trials: the fastest, with a warning
])
def test_the_target_handed_to_the_policy_is_corrected_by_the_measured_miss(measured, caplog, ratios, chosen):
    timed = measured(*ratios)
    with caplog.at_level(logging.INFO, logger="onnxprune.api.latency_target"):
        pruned = prune_model(network([64, 64, 64]), "l1", PolicyConfig(latency_target=0.4))
    asked = [float(record.getMessage().split("for ")[1].split(",")[0]) for record in caplog.records
             if "asked the layer table" in record.getMessage()]
    assert len(timed) == len(ratios) and asked[0] == 0.4
    for before, after, ratio in zip(asked, asked[1:], ratios):
        assert after == pytest.approx(before * 0.4 / ratio, abs=1e-3)
    assert pruned.removed is timed[chosen] and pruned.removed.measured_latency == ratios[chosen]
    sizes = {group.id: group.size for group in pruned.channel_graph.groups}
    first, second = kept_total(timed[0], sizes), kept_total(timed[1], sizes)
    assert (second < first) if ratios[0] > 0.4 else (second > first)
    assert ("not reached" in caplog.text) == (chosen == 2)


def test_no_trials_trusts_the_table(measured):
    timed = measured()
    pruned = prune_model(network([64, 64, 64]), "l1", PolicyConfig(latency_target=0.4, latency_trials=0))
    assert not timed and pruned.removed.measured_latency is None and pruned.removed.predicted_latency <= 0.4


def test_the_check_times_the_pruned_model_for_real(monkeypatch):
    from onnxprune.channels import policy
    from tests.channels.test_policy import FakeTable

    monkeypatch.setattr(policy, "LatencyTable", lambda threads: FakeTable())  # the table's floor is not at stake
    pruned = prune_model(network([64, 64, 64]), "l1", PolicyConfig(latency_target=0.5, latency_trials=1))
    assert 0 < pruned.removed.measured_latency < 2 and "latency check" in pruned.phases.to_dict()
