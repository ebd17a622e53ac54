"""The app factory: routes, middlewares, and the state opened and closed in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from ..config import Config
from ..store import Store
from ..store.lifecycle import sweep
from ..upstreams import git
from . import api
from .keys import CLEAN_TMP, CONFIG, STATE, STRICT
from .middleware import errors_middleware
from .proxy import proxy, proxy_requests
from .state import ServerState

log = logging.getLogger("cachesrv.web")

#: Seconds between writes of the last-access batch.
ACCESS_FLUSH = 10.0


def make_app(config: Config, *, strict: bool = False, clean_tmp: bool = True) -> web.Application:
    """Build the server for `config`. Nothing is opened until the app starts.

    `strict` (offline only) serves a `/@seed/` request only from that seed's entries.
    """
    # Request bodies: snap refresh actions and git upload-pack requests (wants, haves).
    app = web.Application(
        middlewares=[errors_middleware, proxy_requests], client_max_size=git.MAX_REQUEST
    )
    app[CONFIG] = config
    app[STRICT] = strict
    app[CLEAN_TMP] = clean_tmp
    app.cleanup_ctx.append(_state_ctx)
    api.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


async def _state_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = Store(config.store, config.limits)
    # With several workers, only the parent may clean tmp/: a worker would delete
    # another worker's write in progress.
    removed = store.blobs.clean_tmp() if app[CLEAN_TMP] else 0
    if removed:
        log.info("removed %d temp files left by an interrupted write", removed)
    state = ServerState.wire(config, store, strict=app[STRICT])
    app[STATE] = state
    watcher = asyncio.create_task(_watch_index(state))
    yield
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await state.store.index.run(state.store.flush_access)
    await state.close()


async def _watch_index(state: ServerState, every: float = 1.0) -> None:
    """Housekeeping, once a second:
    - drop the hot-entry cache when another process (fsck, seed import, another
      worker) commits to the index; this process's own writes invalidate by key;
    - every `ACCESS_FLUSH` seconds, write the batch of last-access times;
    - some time after evictions, sweep unreferenced blobs (`lifecycle.collect`)."""
    store = state.store
    index = store.index
    last = await index.run(index.data_version)
    flushed = time.monotonic()
    while True:
        await asyncio.sleep(every)
        if time.monotonic() - flushed >= ACCESS_FLUSH:
            await index.run(store.flush_access)
            flushed = time.monotonic()
        version = await index.run(index.data_version)
        if version != last:
            store.hot.invalidate()
            last = version
        if store.lifecycle.wants_sweep(time.time()):
            store.lifecycle.last_sweep = time.time()
            report = await asyncio.get_running_loop().run_in_executor(None, sweep, store.root)
            store.lifecycle.counters.gc_runs += 1
            store.lifecycle.counters.gc_freed_bytes += report.freed
            log.info("%s (after evictions)", report.summary())
