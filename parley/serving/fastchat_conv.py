"""A named template as the `Conversation` dict FastChat's API server rebuilds from a worker.

FastChat's API server asks a worker for its template (`/worker_get_conv_template`) and renders
prompts itself, so a parley worker answers with FastChat's own fields and separator-style
numbers (those of fschat 0.2.36, the last release; checked against it in the tests).
"""

from __future__ import annotations

from parley.conversation.templates import NamedTemplate

FASTCHAT_SEP_STYLE = {  # fastchat.conversation.SeparatorStyle values in fschat 0.2.36
    "add_colon_single": 1,
    "add_colon_two": 2,
    "no_colon_single": 4,
    "llama2": 7,
    "chatml": 9,
    "dolly": 11,
    "rwkv": 12,
    "chatglm3": 16,
}


def fastchat_conversation(t: NamedTemplate) -> dict:
    stop: str | list[str] | None = None
    if len(t.stop) == 1:
        stop = t.stop[0]
    elif t.stop:
        stop = list(t.stop)
    return {
        "name": t.name,
        "system_template": t.system_template,
        "system_message": t.system_message,
        "roles": list(t.roles),
        "messages": [list(m) for m in t.examples],
        "offset": len(t.examples),
        "sep_style": FASTCHAT_SEP_STYLE.get(t.style),  # None: a style FastChat 0.2.36 lacks (llama3, gemma)
        "sep": t.sep,
        "sep2": t.sep2 or None,
        "stop_str": stop,
        "stop_token_ids": list(t.stop_token_ids) or None,
    }


def named_template_from_fastchat(conv: dict) -> NamedTemplate:
    """The inverse: a FastChat worker's template, to render prompts for it. ValueError for a
    separator style parley does not implement."""
    styles = {number: style for style, number in FASTCHAT_SEP_STYLE.items()}
    style = styles.get(conv.get("sep_style"))
    if style is None:
        raise ValueError(f"FastChat separator style {conv.get('sep_style')!r} of template {conv.get('name')!r}")
    offset = int(conv.get("offset") or 0)
    stop = conv.get("stop_str")
    return NamedTemplate(
        name=conv.get("name") or "fastchat",
        style=style,
        roles=tuple(conv["roles"]),
        system_template=conv.get("system_template") or "{system_message}",
        system_message=conv.get("system_message") or "",
        sep=conv.get("sep") or "",
        sep2=conv.get("sep2") or "",
        examples=tuple((m[0], m[1]) for m in (conv.get("messages") or [])[:offset]),
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        stop_token_ids=tuple(conv.get("stop_token_ids") or ()),
    )
