"""Reward scoring in one place.

- ``rlhf.reward.model``: reward models (an HF ``*ForSequenceClassification`` read at the last token): loading, the
  per-token score head PPO's critic reuses, the pairwise loss of the rm stage, and ``RewardScorer`` for saved RMs;
- ``rlhf.reward.remote``: the HTTP client for a remote reward service (ours or OpenRLHF's protocol);
- ``rlhf.reward.functions``: programmatic rewards (``module:callable``), their loader and caller;
- ``rlhf.reward.combined``: PPO's reward as a weighted sum of those sources;
- ``rlhf.reward.shaping``: scores -> PPO's per-token rewards (KL penalty, clipping, running normalisation).

Preference judges that use these scorers to label pairs live with the collect stage (``rlhf.collect.judges``).
"""
