"""Channel dependency analysis: which positions of which tensors are removed together."""

from onnxprune.channels.analysis import ChannelGraph, ChannelGroup, analyse

__all__ = ["ChannelGraph", "ChannelGroup", "analyse"]
