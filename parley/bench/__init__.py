"""Load testing for OpenAI-compatible servers (`parley bench`)."""
