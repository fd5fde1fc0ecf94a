"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") through peft, for SFT, RM and PPO.

``apply_lora`` injects adapters into an HF model in place and freezes everything else, so DeepSpeed's optimizer
only sees the adapters (plus ``modules_to_save``, e.g. an RM's new score head). The model keeps its own class and
forward; only its state-dict keys change (``q_proj.base_layer.weight``, ``q_proj.lora_A.default.weight``, ...).

``merge_lora_state_dict`` folds the adapters back on plain tensors, W' = W + (alpha / r) * B @ A, so a saved HF dir
holds the merged model that plain transformers loads. It works on a ZeRO-3 consolidated state dict, where the
live modules are only shards.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from pydantic import Field, field_validator

from rlhf.config import Section

ADAPTER = "default"  # peft's adapter name


class LoraSection(Section):
    r: int = Field(8, ge=1, description="rank of the update matrices")
    alpha: float = Field(16.0, gt=0, description="scaling numerator: the update is (alpha / r) * B @ A")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="names of the Linear layers that get adapters (LLaMA: q/k/v/o_proj, gate/up/down_proj)",
    )

    @field_validator("target_modules")
    @classmethod
    def _not_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("target_modules must name at least one module")
        return v

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def apply_lora(model: torch.nn.Module, lora: LoraSection, modules_to_save: list[str] | None = None) -> torch.nn.Module:
    """Inject adapters into ``model`` (in place) and return it; only adapters and ``modules_to_save`` train."""
    import peft

    from rlhf.errors import UserError

    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), modules_to_save=modules_to_save, bias="none")
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise UserError(f"lora.target_modules {lora.target_modules}: {str(err).splitlines()[0]}") from None
    return wrapped.get_base_model()


def prepare_for_training(model: torch.nn.Module, lora: LoraSection | None, gradient_checkpointing: bool,
                         modules_to_save: list[str] | None = None) -> torch.nn.Module:
    """Optional LoRA, then optional activation checkpointing (the order peft needs); returns the model to train."""
    if lora is not None:
        model = apply_lora(model, lora, modules_to_save)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if lora is not None:
            model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
    return model


@contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` (peft-injected) computing with its base weights only: every adapter off, then back on.

    PPO with LoRA uses this as its reference policy (StackLLaMA, TRL's ``disable_adapter``): the actor's own
    frozen base, so no second copy of the policy is held. Only adapters that were on are switched back on.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.disable_adapters]
    if not layers:
        raise RuntimeError("adapters_disabled: the model has no active LoRA adapters")
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def adapter_parameter_count(model: torch.nn.Module, lora: LoraSection) -> int:
    """What the adapters must hold: r * (in + out) for every targeted Linear of the unadapted ``model``."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in lora.target_modules:
            count += lora.r * (module.in_features + module.out_features)
    return count


def trainable_parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora_state_dict(state_dict: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A peft-injected state dict -> the plain model's: adapters merged, wrapper keys renamed.

    ``X.base_layer.weight`` + ``X.lora_A/B`` -> ``X.weight``; ``X.modules_to_save.default.*`` -> ``X.*``
    (the trained copy); ``X.original_module.*`` is dropped. A dict without adapters comes back unchanged.
    """
    tag_a, tag_b = f".lora_A.{ADAPTER}.weight", f".lora_B.{ADAPTER}.weight"
    saved_tag, original_tag = f".modules_to_save.{ADAPTER}.", ".original_module."
    merged: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith((tag_a, tag_b)) or original_tag in key:
            continue
        if key.endswith(".base_layer.weight"):
            stem = key[: -len(".base_layer.weight")]
            a, b = state_dict[stem + tag_a], state_dict[stem + tag_b]
            delta = (b.float() @ a.float()) * scaling
            merged[stem + ".weight"] = (value.float() + delta).to(value.dtype)
        elif ".base_layer." in key:
            merged[key.replace(".base_layer.", ".")] = value
        elif saved_tag in key:
            merged[key.replace(saved_tag, ".")] = value
        else:
            merged[key] = value
    return merged
