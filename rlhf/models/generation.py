"""Moved to :mod:`rlhf.sampling` (one sampling path for every caller); kept as an import path."""

from rlhf.sampling import SamplingParams, cut_at_eos, left_pad, sample  # noqa: F401
