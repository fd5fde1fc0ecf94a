"""Reward scoring in one place.

- ``rlhf.reward.functions``: programmatic rewards (``module:callable``), their loader and caller;
- ``rlhf.reward.combined``: the PPO reward as a weighted sum of sources (RM, remote service, function).
"""
