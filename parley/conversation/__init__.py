"""Chat templates: the model's own Jinja template first, FastChat-compatible named templates otherwise."""
