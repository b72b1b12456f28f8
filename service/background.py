"""Stopping a background poller's task: let the run in progress finish, within a grace period."""

from __future__ import annotations

import asyncio


async def finish_or_cancel(task: asyncio.Task | None, grace: float) -> None:
    """Wait up to ``grace`` seconds for ``task`` (the run in progress) to end, then cancel it. Its own failures
    are its business (each poller's loop logs them); shutdown goes on."""
    if task is None:
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=grace)
    except asyncio.TimeoutError:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    except Exception:  # pragma: no cover - the loop logs its own failures
        pass
