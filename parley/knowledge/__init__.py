"""Knowledge for assistants: documents parsed, split into chunks by tokens, embedded and searched."""
