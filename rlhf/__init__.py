"""rlhf: data collection -> SFT -> reward model -> PPO on DeepSpeed and Ray."""

__version__ = "0.1.0"
