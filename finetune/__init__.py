"""pubmind finetune."""
