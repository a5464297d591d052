"""LoRA fine-tuning: chat tokenisation with assistant-only labels and a peft training loop."""

from ftsafe_ray.finetune.lora import PROVENANCE_FILE, TrainResult, lora_config, train_lora
from ftsafe_ray.finetune.tokenize import IGNORE_INDEX, tokenize_chat_for_training

__all__ = [
    "IGNORE_INDEX",
    "PROVENANCE_FILE",
    "TrainResult",
    "lora_config",
    "tokenize_chat_for_training",
    "train_lora",
]
