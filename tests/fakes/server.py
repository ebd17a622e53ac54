"""What the fake HTTP servers share: a thread, its event loop, listeners and a request log.

:class:`ThreadedServer` runs aiohttp servers on ``127.0.0.1:<random port>`` in a
background thread with its own event loop, so the same object works from plain
synchronous tests (apt-get, pip, uv and snapd run as subprocesses) and from async tests
(whose loop is busy running the test itself). ``FakeUpstream``, ``FakePyPI`` and
``FakeSnapStore`` build on it. A subclass says what to serve in :meth:`_setup`, binding one
listener per :meth:`_listen` call (an ``aiohttp.web.Application``, or a low-level handler
that sees every request); the base does the rest:

* :meth:`start` returns once every listener accepts connections (no polling);
  :meth:`stop` tears everything down abruptly, like a server that died, and leaks no
  socket, not even for a connection accepted while stopping; it is idempotent (and does
  nothing before ``start()``); the object is also a context manager;
* ``requests``: the request log, appended under a lock from the server thread (read it
  freely from the test), with :meth:`count`, :meth:`paths` and :meth:`reset_log`;
  :meth:`_recorder` is a middleware that logs each request before it is handled;
* ``_stopping``: an event set when :meth:`stop` begins, for handlers that wait (a hang).
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import threading
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict, CIMultiDictProxy

LowLevelHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Recorded(Protocol):
    """What the request log needs of an entry."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...


R = TypeVar("R", bound=Recorded)


class _TrackingServer(web.Server):
    """aiohttp's low-level server, reporting every connection's transport when made."""

    def __init__(
        self,
        handler: LowLevelHandler,
        on_connection: Callable[[asyncio.Transport], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._on_connection = on_connection

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._on_connection(transport)


class ThreadedServer(Generic[R]):
    """Listeners on ``127.0.0.1:<random port>``, served from a thread; see the module doc.

    Subclasses implement :meth:`_setup`; ``name`` names the thread (default: the class).
    """

    def __init__(self, name: str | None = None) -> None:
        self.requests: list[R] = []
        self._name = name or type(self).__name__
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._listeners: list[asyncio.Server] = []
        self._runners: list[web.AppRunner] = []
        # Every accepted connection, so stop() can abort those still open (weak: closed
        # transports go away on their own).
        self._transports: weakref.WeakSet[asyncio.Transport] = weakref.WeakSet()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Bind the listeners and return once they accept connections."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        # Explicitly the selector loop (not a policy's uvloop): _astop relies on its accept
        # and close semantics.
        loop = asyncio.SelectorEventLoop()
        thread = threading.Thread(target=self._run_loop, args=(loop,), name=self._name, daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._astart(), loop).result(timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listeners and every connection, stop the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        try:
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    async def _setup(self) -> None:
        """Bind the listeners (with :meth:`_listen`) and set the URLs; runs in the loop."""
        raise NotImplementedError

    async def _listen(
        self,
        target: web.Application | LowLevelHandler,
        *,
        ssl: ssl_module.SSLContext | None = None,
        port: int = 0,
    ) -> int:
        """Serve ``target`` on a new listener at 127.0.0.1:``port``; return the bound port.

        With ``ssl`` (a server-side context) the listener speaks HTTPS. A fixed ``port``
        lets a server be stopped and started again where its clients expect it (the soak
        bench restarts its upstream); 0 takes a free one.
        """
        if isinstance(target, web.Application):
            runner = web.AppRunner(target, access_log=None, handle_signals=False)
            await runner.setup()  # the app's startup; we serve its handler with our server
            self._runners.append(runner)
            assert runner.server is not None
            handler, factory = runner.server.request_handler, runner.server.request_factory
        else:
            handler, factory = target, None
        # aiohttp's low-level server behind a plain asyncio server, so that every accepted
        # connection is tracked (see _astop).
        server = _TrackingServer(
            handler, self._transports.add, request_factory=factory, access_log=None
        )
        listener = await asyncio.get_running_loop().create_server(
            server, "127.0.0.1", port, ssl=ssl
        )
        self._listeners.append(listener)
        # create_server() returns after listen() and with the accept reader registered:
        # from here on connections queue in the backlog and are served, no polling needed.
        assert listener.is_serving()
        return int(listener.sockets[0].getsockname()[1])

    async def _astart(self) -> None:
        self._stopping = asyncio.Event()
        await self._setup()

    async def _astop(self) -> None:
        """Tear down without leaking a socket, even for connections accepted mid-stop.

        No graceful shutdown: a fake server that is stopped mid-answer should look like
        one that died. Every connection is aborted, every task cancelled.
        """
        loop = asyncio.get_running_loop()
        if self._stopping is not None:
            self._stopping.set()  # waiting handlers (FakeUpstream's hang, slow) end now
        if self._listeners:
            # Stop accepting, but do not close the listeners yet: an accept already under
            # way fails if the asyncio.Server is closed first (Server._attach() asserts it
            # is open) and leaks its socket. Two turns of the loop (the ready queue is
            # FIFO) let those accepts create their transport and connection_made() track
            # it; only then are the listeners closed.
            for listener in self._listeners:
                for sock in listener.sockets:
                    loop.remove_reader(sock.fileno())
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            for listener in self._listeners:
                listener.close()
        # Abort every connection ever accepted. (aiohttp's own graceful shutdown only
        # close()s them: a transport with unsent data, e.g. a truncated body the client
        # never read, stays open; and it waits out its timeout for a connection whose
        # handler task has not started yet.) The sockets are really closed in loop
        # callbacks queued by abort(), which run during the next yield.
        for transport in list(self._transports):
            transport.abort()
        await asyncio.sleep(0)
        # Nothing may stay pending when the loop closes ("Task was destroyed" warnings).
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for listener in self._listeners:
            await listener.wait_closed()
        for runner in self._runners:
            await runner.cleanup()  # the apps' shutdown and cleanup (no connections left)
        await loop.shutdown_asyncgens()
        await loop.shutdown_default_executor()  # asyncio.to_thread's threads
        self._listeners.clear()
        self._runners.clear()

    # -- request log -------------------------------------------------------------------

    def count(self, prefix: str = "") -> int:
        """Number of recorded requests whose path starts with ``prefix``."""
        return len(self._logged(prefix))

    def paths(self, prefix: str = "") -> list[str]:
        """Paths of the recorded requests (in order) that start with ``prefix``."""
        return [r.path for r in self._logged(prefix)]

    def reset_log(self) -> None:
        """Forget every recorded request (the list object stays the same)."""
        with self._lock:
            self.requests.clear()

    def _logged(self, prefix: str) -> list[R]:
        """The recorded requests whose path starts with ``prefix``, in order."""
        with self._lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    def _log(self, entry: R) -> None:
        with self._lock:
            self.requests.append(entry)

    def _recorder(
        self, listener: str, record: Callable[..., R], *, body: bool = False
    ) -> Middleware:
        """A middleware logging each request on ``listener`` before it is handled.

        The entry is ``record(method=, path=, query=, headers=, listener=)`` (``headers``
        a copy, ``path`` decoded and without the query), plus ``body=`` (the request body)
        when ``body`` is true. Its ``status`` is set once the handler has decided it (also
        for an ``HTTPException``), before the answer is sent.
        """

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            extra = {"body": await request.read()} if body else {}
            entry: Any = record(
                method=request.method,
                path=request.path,
                query=request.query_string,
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                listener=listener,
                **extra,
            )
            self._log(entry)
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                entry.status = exc.status
                raise
            entry.status = response.status
            return response

        return middleware
