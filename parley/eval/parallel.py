"""Run many independent evaluation calls, at most N at a time, with a progress bar."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


async def run_with_progress(jobs: Sequence[Callable[[], Awaitable[None]]], parallel: int, description: str,
                            quiet: bool = False) -> None:
    """Each job records its own result (and its own failure); this only schedules and counts."""
    limit = asyncio.Semaphore(max(1, parallel))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, disable=quiet) as progress:
        task = progress.add_task(description, total=len(jobs))

        async def one(job):
            async with limit:
                await job()
            progress.advance(task)

        await asyncio.gather(*(one(job) for job in jobs))
