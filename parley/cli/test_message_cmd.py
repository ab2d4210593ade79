"""`parley test-message`: send one message to a model through the controller (or to one worker)
and print the streamed reply — the quickest check that a deployment works."""

from __future__ import annotations

import argparse
import asyncio
import sys

import httpx

from parley.cli.secret_args import add_cluster_secret_argument, cluster_secret
from parley.errors import ParleyError
from parley.serving.api_errors import APIError
from parley.serving.cluster_auth import auth_headers
from parley.serving.gateway import WorkerGateway


def add_parser(sub) -> None:
    p = sub.add_parser("test-message", help="send a test message to a served model", description=__doc__)
    p.add_argument("--model-name", required=True)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--controller-address", default="http://127.0.0.1:21001")
    where.add_argument("--worker-address", default=None, help="talk to this worker directly, bypassing the controller")
    p.add_argument("--message", default="Tell me a story with more than 1000 words.")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    add_cluster_secret_argument(p)
    p.set_defaults(run=run)


async def _send(args: argparse.Namespace) -> None:
    payload = {"model": args.model_name, "messages": [{"role": "user", "content": args.message}],
               "temperature": args.temperature, "max_new_tokens": args.max_new_tokens}
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0), headers=auth_headers(cluster_secret(args))) as http:
        gateway = WorkerGateway(http, args.controller_address)
        if not args.worker_address:
            models = await gateway.list_models()
            if args.model_name not in models:
                raise ParleyError(f"no worker serves '{args.model_name}'; the controller at {args.controller_address} "
                                  f"has: {', '.join(models) or 'no models'}")
        print(f"user: {args.message}\n{args.model_name}: ", end="", flush=True)
        seen = ""
        async for chunk in gateway.generate_stream(args.model_name, payload, worker=args.worker_address):
            if chunk.get("error_code"):
                print()
                raise ParleyError(f"the worker answered with error {chunk['error_code']}: {chunk.get('text')}")
            text = chunk.get("text", "")
            sys.stdout.write(text[len(seen):])
            sys.stdout.flush()
            seen = text
        print()


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_send(args))
    except APIError as exc:
        raise ParleyError(exc.message) from None
    return 0
