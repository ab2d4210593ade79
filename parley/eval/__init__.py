"""Evaluation: MT-bench with an LLM judge, and Arena ratings."""
