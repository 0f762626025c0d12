"""Fine-tuning a pretrained GPT: classification (classify.py), instruction tuning (instruct.py),
and LoRA adapters saved and loaded on their own (adapters.py). The layers themselves live below:
nn.LoRALinear / nn.apply_lora, models.GPTClassifier."""
