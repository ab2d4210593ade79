"""`parley chat`: a terminal chat with a local model or any OpenAI-compatible server."""
