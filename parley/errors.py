"""The error types parley raises on purpose, each with a message meant for a person."""

from __future__ import annotations


class ParleyError(Exception):
    """Base class: a failure parley explains in one line (the CLI prints it and exits 2)."""

    exit_code = 2


class ModelPathError(ParleyError):
    """`--model-path` names nothing loadable."""


class ModelLoadError(ParleyError):
    """A model was found but could not be loaded (hub unreachable, corrupt files, no GPU...)."""


class InvalidRequestError(ParleyError):
    """A generation request that can never succeed as given (bad parameters, empty prompt)."""


class InvalidPromptError(InvalidRequestError):
    """The conversation (or prompt) cannot be made into a prompt: messages out of order, a template that
    refuses them."""


class ContextLengthError(InvalidRequestError):
    """The prompt does not fit the model's context window.

    Policy: parley never truncates a prompt silently. A prompt of `context_length` tokens
    or more is refused with this error; a shorter prompt is served and its
    `max_new_tokens` is capped to the room that is left (finish_reason "length").
    """

    def __init__(self, prompt_tokens: int, context_length: int):
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length
        super().__init__(
            f"the prompt has {prompt_tokens} tokens but the model's context window is "
            f"{context_length} tokens; shorten the conversation (in `parley chat`: !!reset or !!remove)"
        )


class EngineClosedError(ParleyError):
    """The engine was shut down while a request was in flight."""
