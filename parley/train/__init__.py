"""Fine-tuning: conversation data, label masks, supervised fine-tuning."""
