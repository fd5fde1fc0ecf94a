"""Evaluation of policies on held-out prompts: oracle accuracy, reward-model scores and pair accuracy, a KL
estimate between two policies, and an optional pairwise LLM judge. ``stages/eval.py`` puts them together."""
