"""Distributed serving: controller, model workers (and, later, the OpenAI-compatible API)."""
