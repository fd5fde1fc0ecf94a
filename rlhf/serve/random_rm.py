"""An untrained reward-model dir (random LLaMA + one-label head), shaped like the rm stage's output.

For the service's tests and benchmark: scores are meaningless but deterministic, which is all that comparing
the service against offline scoring needs. The ``rlhf_*`` config keys are the ones the rm stage writes.
"""

from __future__ import annotations

from pathlib import Path


def write_random_reward_model(out_dir: str | Path, size: str = "tiny-llama", seed: int = 0, template: str = "vicuna",
                              max_length: int = 256, mean: float = 0.25, std: float = 2.0, device: str = "cpu",
                              **overrides) -> Path:
    """Save ``LlamaForSequenceClassification(num_labels=1)`` on the embedded tokenizer to ``out_dir``.

    ``size``: a name from rlhf.models.tiny.SIZES; ``device``: where the weights are initialised (a 1.1B model
    initialises in seconds on a GPU, a minute on CPU); ``overrides``: LlamaConfig fields (e.g. num_hidden_layers).
    """
    import torch
    from transformers import LlamaForSequenceClassification

    from rlhf.models.tiny import llama_config
    from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer

    tokenizer = load_tokenizer(EMBEDDED_TOKENIZER)
    config = llama_config(size, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                          tokenizer.pad_token_id, num_labels=1, **overrides)
    config.update({"rlhf_reward_mean": mean, "rlhf_reward_std": std, "rlhf_template": template,
                   "rlhf_max_length": max_length})
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForSequenceClassification(config)
    with torch.no_grad():  # a head that spreads scores out, so comparisons are not all near zero
        model.score.weight.normal_(0.0, 1.0)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
