"""A latency target met on the runtime itself: the layer table proposes, onnxruntime decides.

The policy's ``latency_target`` prices channels with the layer table, which times each conv as a
one-node model. That sum is a biased stand-in for the model's time: every one-node model pays its
own layout reorders (the convs' share is overstated: ResNet-50's layers sum to 123 ms, the model
runs in 104 ms), and the ops between the convs -- activations, residual adds, concats,
squeeze-excitation -- are not timed at all, while their cost falls only linearly with the
channels. On the zoo, models pruned to a predicted 0.35 of the latency ran at 0.40-0.45.

So, as NetAdapt does, the proposal is built and timed against the original (interleaved runs,
the same threads), and the target handed to the policy is corrected by the measured miss --
``asked *= target / measured`` -- up to ``latency_trials`` times. The selection kept is the one
that keeps most channels among those measured at or under the target (within the timing noise);
when none is, the fastest one, with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx

from onnxprune import channels
from onnxprune.channels import policy, surgery
from onnxprune.core import model as model_io
from onnxprune.core.errors import OptionError
from onnxprune.measure.latency import measure_many
from onnxprune.measure.stats import ModelStats
from onnxprune.passes import pipeline

log = logging.getLogger(__name__)

RUNS = 15  # interleaved timed runs of each model per trial
WARMUP = 2
SLACK = 0.02  # relative: a measured ratio within 2 % over the target counts as meeting it (timing noise)
CLOSE = 0.05  # relative: a ratio this far under the target stops the search (good enough, keeps channels)
MAX_ASKED = 0.99


@dataclasses.dataclass
class _Trial:
    asked: float
    measured: float
    selection: policy.Selection


def meet_latency_target(
    model: onnx.ModelProto,
    graph_model: onnx.ModelProto,
    channel_graph: channels.ChannelGraph,
    scores: Mapping[int, np.ndarray],
    config: policy.PolicyConfig,
    counted: ModelStats,
    feed: Mapping[str, np.ndarray],
    first: policy.Selection,
) -> policy.Selection:
    """The selection whose pruned model measures at most ``config.latency_target`` of ``model``'s latency.

    ``graph_model`` is the analysed graph as a model (the names ``channel_graph`` refers to);
    ``first`` is the policy's selection at the target itself. The returned selection carries the
    ratio it measured (``measured_latency``).
    """
    target = config.latency_target
    assert target is not None
    trials: list[_Trial] = []
    asked, selection = target, first
    for _ in range(config.latency_trials):
        measured = _measured_ratio(model, graph_model, channel_graph, selection, feed, config.latency_threads)
        trials.append(_Trial(asked, measured, selection))
        log.info("latency target %.3g: asked the layer table for %.3f, measured %.3f", target, asked, measured)
        if target * (1 - CLOSE) <= measured <= target * (1 + SLACK):
            break
        asked = min(asked * target / measured, MAX_ASKED)
        try:
            selection = policy.select(channel_graph, scores, dataclasses.replace(config, latency_target=asked),
                                      counted)
        except OptionError as exc:  # the correction asks for more than the floor allows
            log.info("latency target: stopping the correction at %.3f: %s", asked, exc)
            break
    chosen = _choose(trials, target)
    chosen.selection.measured_latency = chosen.measured
    return chosen.selection


def _choose(trials: list[_Trial], target: float) -> _Trial:
    met = [trial for trial in trials if trial.measured <= target * (1 + SLACK)]
    if met:
        return max(met, key=lambda trial: trial.asked)
    fastest = min(trials, key=lambda trial: trial.measured)
    log.warning("latency target %.3g not reached: the fastest pruning measured %.3f of the original latency",
                target, fastest.measured)
    return fastest


def _measured_ratio(model: onnx.ModelProto, graph_model: onnx.ModelProto, channel_graph: channels.ChannelGraph,
                    selection: policy.Selection, feed: Mapping[str, np.ndarray], threads: int) -> float:
    """Median latency of the pruned and folded proposal over the original's, timed interleaved."""
    graph = model_io.to_graph(graph_model)
    pipeline.prepare(graph)
    surgery.run(graph, channel_graph, selection)
    pipeline.run_passes(graph, list(pipeline.REGISTRY))
    pruned = model_io.to_model(graph, model)
    before, after = measure_many([model, pruned], feed, runs=RUNS, warmup=WARMUP, threads=threads)
    return after.median_ms / before.median_ms
