"""`parley chat`: talk to a local model or to any OpenAI-compatible server from the terminal."""

from __future__ import annotations

import argparse

from parley.chat.session import HELP
from parley.chat.styles import STYLES
from parley.cli.engine_args import add_engine_arguments, load_engine
from parley.errors import ParleyError


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="chat in the terminal", description=__doc__, epilog=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_arguments(p)
    r = p.add_argument_group("remote server (instead of a local model)")
    r.add_argument("--base-url", default=None, help="an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
    r.add_argument("--model", default=None, help="model name on that server")
    r.add_argument("--api-key", default=None)
    c = p.add_argument_group("conversation")
    c.add_argument("--conv-template", default=None, help="named chat template instead of the model's own")
    c.add_argument("--style", default="simple", choices=sorted(STYLES))
    c.add_argument("--multiline", action="store_true", help="messages end with a blank line")
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--temperature", type=float, default=0.7)
    c.add_argument("--top-p", type=float, default=1.0)
    c.add_argument("--max-new-tokens", type=int, default=512)
    c.add_argument("--repetition-penalty", type=float, default=1.0)
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--no-history", action="store_true", help="send each message without the earlier turns")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from parley.chat.app import run_chat
    from parley.chat.backends import ChatParams, LocalBackend, RemoteBackend
    from parley.chat.session import ChatSession

    try:
        params = ChatParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                            repetition_penalty=args.repetition_penalty, seed=args.seed)
    except ValueError as exc:
        raise ParleyError(f"bad sampling parameter: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
    if args.engine == "openai" and not args.base_url:  # chat with the server directly: it applies its own template
        args.base_url, args.model = args.upstream_base_url, args.model or args.upstream_model
        args.api_key = args.api_key or args.upstream_api_key
        if not args.base_url:
            raise ParleyError("--engine openai needs --upstream-base-url (or use --base-url)")
    if args.base_url:
        if not args.model:
            raise ParleyError("--base-url needs --model NAME")
        backend = RemoteBackend(args.base_url, args.model, args.api_key)
    else:
        engine = load_engine(args)
        backend = LocalBackend(engine)
    style = STYLES[args.style](multiline=args.multiline)
    if args.style != "programmatic":
        style.info(f"chatting with {backend.model_name}; type help for commands")
    run_chat(backend, style, ChatSession(system=args.system, keep_history=not args.no_history), params)
    return 0
