"""Reward models: an HF ``*ForSequenceClassification`` (num_labels=1) read at the last real token.

The same code scores in training (under DeepSpeed), in the scoring service and in PPO's reward role:
- ``last_token_scores``: per-token values [B, T] -> the value at each row's last attended token, for left or right
  padding (PPO's critic reuses it);
- ``TokenValues``: the classifier's score head applied at every position, with positions counted from the attention
  mask so that left- and right-padded batches give the same numbers;
- ``pairwise_loss``: the Bradley-Terry loss of InstructGPT (Ouyang et al. 2022), the per-pair margin of Llama 2
  (Touvron et al. 2023) and the reward-centering term of Eisenstein et al. 2023 ("Helping or Herding?");
- ``RewardScorer``: load a saved RM dir and score texts, token ids or (prompt, response) pairs.

A saved RM is a plain HF dir; its config.json carries ``rlhf_reward_mean``/``rlhf_reward_std`` (over the training
data, for normalizing), ``rlhf_template`` and ``rlhf_max_length`` (how the RM's inputs were built).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from rlhf.errors import UserError

# The saved RM's own pad when the tokenizer's pad is its eos (see save_reward_model).
DISTINCT_PAD = "<|rlhf_pad|>"
MEAN_KEY, STD_KEY, TEMPLATE_KEY, MAX_LENGTH_KEY = "rlhf_reward_mean", "rlhf_reward_std", "rlhf_template", "rlhf_max_length"


def check_reward_model(model: str) -> str:
    """``model`` (an HF dir, or a hub id) if its config.json describes a reward model: a ``*ForSequenceClassification``
    with one label. Else a one-line UserError, so that PPO, eval, the collect judge and the service refuse, say an
    SFT causal-LM dir, before any worker starts (HF would load it with a fresh random score head). Reads config.json
    only; no weights are loaded.
    """
    from rlhf.models.loading import looks_local
    from rlhf.paths import resolve_path

    local = resolve_path(model)
    if local.exists() or looks_local(model):
        config_file = local / "config.json"
        if not config_file.is_file():
            raise UserError(f"{model}: not a model directory (no config.json)")
    else:
        from huggingface_hub import hf_hub_download

        try:
            config_file = Path(hf_hub_download(model, "config.json"))
        except Exception as err:  # offline, unknown repo, gated: the user's to fix
            raise UserError(f"{model}: no such directory and no config.json on the hub ({type(err).__name__})") from None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{config_file}: unreadable config ({err})") from None
    architectures = config.get("architectures") or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise UserError(f"{model}: not a reward model: config.json describes a {architectures[0]}; a reward model is "
                        "a *ForSequenceClassification with one label (the rm stage's OUT/model)")
    labels = config.get("num_labels", len(config.get("id2label") or {}) or None)
    if labels != 1:
        raise UserError(f"{model}: a reward model has one label; config.json has num_labels={labels}")
    return model


def last_token_scores(logits_or_values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """logits_or_values [B, T], attention_mask [B, T] (1 = real token) -> [B]: each row's value at its last real token.

    Works for left padding, right padding and none; a row with no real token reads position 0.
    """
    values = logits_or_values
    positions = torch.arange(values.shape[1], device=values.device)
    last = (positions * attention_mask.to(values.device).long()).argmax(dim=1)
    return values.gather(1, last.unsqueeze(1)).squeeze(1)


def mask_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] position ids counted over real tokens only (0 on left padding), as generation does."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


class TokenValues(torch.nn.Module):
    """Wraps an HF ``*ForSequenceClassification`` with num_labels=1: forward -> per-token values [B, T].

    HF's own forward pools at the last token that is not ``pad_token_id``; we keep every position so the same
    module serves the RM (read at the last token) and a critic (read at every response token).
    """

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        base = getattr(self.classifier, self.classifier.base_model_prefix)
        hidden = base(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=mask_positions(attention_mask), use_cache=False).last_hidden_state
        return self.classifier.score(hidden).squeeze(-1).float()


def unwrap_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A TokenValues state dict -> the classifier's own keys (what ``from_pretrained`` expects)."""
    prefix = "classifier."
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                  center_coef: float = 0.0) -> torch.Tensor:
    """chosen, rejected, margin: [B] -> scalar  mean(-log sigmoid(r_c - r_r - m)) + center_coef * mean((r_c + r_r)^2)."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    return loss


def load_reward_model(path: str, dtype: torch.dtype = torch.float32, pad_token_id: int | None = None):
    """An ``AutoModelForSequenceClassification`` with one label from an RM dir, an SFT model or any LLaMA path."""
    from transformers import AutoModelForSequenceClassification

    from rlhf.models.loading import load_pretrained

    model = load_pretrained(AutoModelForSequenceClassification, path, dtype, num_labels=1)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # HF's own pooling (and vLLM's) finds the last token by it
    return model


def save_reward_model(classifier: torch.nn.Module, state_dict: dict[str, torch.Tensor], tokenizer, out_dir,
                      extra_config: dict) -> None:
    """Save an RM as an HF dir that plain ``AutoModelForSequenceClassification`` scores as we do.

    HF's pooling reads at the last token that is not ``pad_token_id``; we read at the last attended token, the eos.
    When pad is eos (tokenizers with neither pad nor unk, e.g. Llama 3), HF would read the token before the eos,
    so the saved RM gets a pad token of its own: the tokenizer gains :data:`DISTINCT_PAD`, the embedding a row for
    it when the vocab has none spare (the mean row; pad positions are masked, so it never changes a score).
    """
    from rlhf.engine.checkpoint import save_hf_dir

    extra = dict(extra_config)
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer = copy.deepcopy(tokenizer)  # the caller's (and later checkpoints') tokenizer stays as it was
        tokenizer.add_special_tokens({"pad_token": DISTINCT_PAD})
        embedding = classifier.get_input_embeddings().weight
        key = next(name for name, param in classifier.named_parameters() if param is embedding)
        weight = state_dict[key]
        if tokenizer.pad_token_id >= weight.shape[0]:
            rows = tokenizer.pad_token_id + 1 - weight.shape[0]
            state_dict = {**state_dict, key: torch.cat([weight, weight.mean(0, keepdim=True).expand(rows, -1)])}
        extra["vocab_size"] = state_dict[key].shape[0]
    extra["pad_token_id"] = tokenizer.pad_token_id
    save_hf_dir(classifier, state_dict, tokenizer, out_dir, extra)


def reward_config(mean: float | None, std: float | None, template: str, max_length: int) -> dict:
    """The keys a saved RM's config.json carries for RewardScorer and PPO."""
    return {MEAN_KEY: mean, STD_KEY: std, TEMPLATE_KEY: template, MAX_LENGTH_KEY: max_length}


class RewardScorer:
    """Score with a saved RM dir (HF weights + tokenizer + the rlhf_* config keys) on one device.

    Inputs are right-padded and read with ``last_token_scores``; each sequence is scored as the RM was trained:
    bos first, eos last, at most ``max_length`` tokens.
    """

    def __init__(self, model_dir: str, device: str | torch.device = "auto", precision: str = "auto"):
        from rlhf.models.loading import inference_device, load_for_inference
        from rlhf.models.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(model_dir)
        self.device = inference_device(device)
        self.model = load_for_inference(model_dir, "reward", precision, self.device,
                                        pad_token_id=self.tokenizer.pad_token_id)
        self.values = TokenValues(self.model)
        config = self.model.config
        self.template: str = getattr(config, TEMPLATE_KEY, None) or "alpaca"
        self.max_length: int = int(getattr(config, MAX_LENGTH_KEY, None) or 512)
        self.mean: float | None = getattr(config, MEAN_KEY, None)
        self.std: float | None = getattr(config, STD_KEY, None)

    @torch.no_grad()
    def score_ids(self, ids: list[list[int]], batch_size: int = 32) -> list[float]:
        """Token id lists (each as the RM was trained: bos ... eos) -> one reward each."""
        scores: list[float] = []
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            if any(not seq for seq in chunk):
                raise UserError("cannot score an empty token sequence")
            width = max(len(seq) for seq in chunk)
            input_ids = torch.tensor([seq + [pad] * (width - len(seq)) for seq in chunk], device=self.device)
            mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in chunk], device=self.device)
            scores.extend(last_token_scores(self.values(input_ids, mask), mask).tolist())
        return scores

    def score_texts(self, texts: list[str], batch_size: int = 32) -> list[float]:
        """Whole rendered transcripts (e.g. ``render_text``) -> rewards; eos is appended when the text lacks it."""
        return self.score_ids([self._text_ids(t) for t in texts], batch_size)

    def score_pairs(self, prompts: list[list[dict]], responses: list[str], normalize: bool = False,
                    batch_size: int = 32) -> list[float]:
        """Prompts (messages ending in a user turn) and responses -> rewards, encoded with the RM's template."""
        from rlhf.data.templates import encode_prompt_response

        if len(prompts) != len(responses):
            raise UserError(f"score_pairs: {len(prompts)} prompts but {len(responses)} responses")
        ids = [encode_prompt_response(p, r, self.template, self.tokenizer, self.max_length)
               for p, r in zip(prompts, responses)]
        scores = self.score_ids(ids, batch_size)
        return self.normalize(scores) if normalize else scores

    def normalize(self, scores: list[float]) -> list[float]:
        """(r - mean) / std with the training data's statistics saved in the RM's config."""
        if self.mean is None or not self.std:
            raise UserError(f"this reward model's config.json has no {MEAN_KEY}/{STD_KEY}; it cannot normalize")
        return [(s - self.mean) / self.std for s in scores]

    def _text_ids(self, text: str) -> list[int]:
        tok = self.tokenizer
        ids = tok(text, add_special_tokens=True)["input_ids"]
        if not ids or ids[-1] != tok.eos_token_id:
            ids = ids + [tok.eos_token_id]
        if len(ids) > self.max_length:  # keep the start token and the end, where the reward is read
            head = ids[:1] if ids[0] == tok.bos_token_id else []
            ids = head + ids[len(ids) - (self.max_length - len(head)):]
        return ids

