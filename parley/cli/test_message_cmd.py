"""`parley test-message`: send one message to a model through the controller (or to one worker)
and print the streamed reply — the quickest check that a deployment works."""

from __future__ import annotations

import argparse
import asyncio
import sys

import httpx

from parley.cli.secret_args import add_cluster_secret_argument, cluster_secret
from parley.errors import ParleyError
from parley.serving.cluster_auth import auth_headers
from parley.serving.cluster_client import ClusterClient
from parley.serving.cluster_errors import ClusterError
from parley.serving.openai_schemas import ChatCompletionRequest, new_id


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
    request = ChatCompletionRequest.model_validate({
        "model": args.model_name, "messages": [{"role": "user", "content": args.message}],
        "temperature": args.temperature, "max_tokens": args.max_new_tokens}).to_generation_request(new_id("test"))
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0), headers=auth_headers(cluster_secret(args))) as http:
        cluster = ClusterClient(http, args.controller_address)
        if not args.worker_address:
            models = await cluster.list_models()
            if args.model_name not in models:
                raise ParleyError(f"no worker serves '{args.model_name}'; the controller at {args.controller_address} "
                                  f"has: {', '.join(models) or 'no models'}")
        print(f"user: {args.message}\n{args.model_name}: ", end="", flush=True)
        try:
            async for chunk in cluster.generate_stream(args.model_name, request, worker=args.worker_address):
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
        finally:
            print()


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_send(args))
    except ClusterError as exc:
        raise ParleyError(f"{exc.message} ({exc.code})") from None
    return 0
