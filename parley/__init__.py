"""parley: serve, chat with, evaluate and fine-tune LLM chatbots."""

__version__ = "0.1.0"
