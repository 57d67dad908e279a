"""Worker processes for ``spectro serve``: each loads the model once and answers one call at a time over a pipe.

The server's event loop watches each worker's end of the pipe itself (``loop.add_reader``), so a call costs
two process wake-ups and no helper thread. (``concurrent.futures.ProcessPoolExecutor`` routes every call
through two helper threads of the server, which costs each request more than the call itself.)

A call sends ``(function, args)``, pickled (``function`` by reference: a module-level function), and gets
back ``("ok", value)`` or ``("error", exception)``; the exception is raised in the server. A worker that
dies is replaced, and the call that was running on it fails with :class:`WorkerDied`. A call given a ``timeout``
that is still running at its deadline fails with :class:`DeadlineExceeded`, and its worker is killed and replaced
then (a worker in the middle of a numpy or LiteRT call cannot be interrupted), so the calls behind it get a
worker instead of waiting for work nobody will read.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from dataclasses import dataclass
from typing import Any

from spectro.errors import SpectroError


class WorkerDied(SpectroError):
    """A worker process ended while answering (killed, out of memory); it has been replaced."""


class DeadlineExceeded(SpectroError):
    """A call did not finish within its timeout: no worker was free in time, or its worker was replaced."""


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process
    conn: Any  # this side of its pipe
    ready: bool = False


def _worker_main(conn, initializer, initargs: tuple) -> None:
    """A worker process: run ``initializer(*initargs)``, say so, then answer calls until the pipe closes."""
    try:
        initializer(*initargs)
        status = ("ready", os.getpid())
    except BaseException as exc:  # noqa: BLE001 - reported to the server, which raises it
        status = ("error", _picklable(exc))
    try:
        conn.send(status)
    except OSError:  # the server is gone, or closed the pool (another worker's start-up failed first): quietly
        return
    if status[0] == "error":
        return
    while True:
        try:
            function, args = conn.recv()
        except (EOFError, OSError):  # the server closed the pipe, or is gone
            return
        try:
            answer = ("ok", function(*args))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the server
            answer = ("error", _picklable(exc))
        try:
            conn.send(answer)
        except OSError:  # the server is gone
            return


def _picklable(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - an exception type that does not survive pickling
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class WorkerProcesses:
    """``n`` worker processes started now (``spawn``), each running ``initializer(*initargs)`` first.

    :meth:`call` runs in the server's event loop; an idle worker takes the call, and callers wait for one when
    all are busy.
    """

    def __init__(self, n: int, initializer, initargs: tuple = ()):
        self._context = multiprocessing.get_context("spawn")
        self._initializer, self._initargs = initializer, initargs
        self.workers = [self._start() for _ in range(n)]
        self._idle: asyncio.Queue | None = None
        self._loop = None
        self._closed = False

    def _start(self) -> _Worker:
        mine, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_worker_main, args=(theirs, self._initializer, self._initargs),
                                        name="spectro-serve-worker", daemon=True)
        process.start()
        theirs.close()  # the worker holds the only other end: it sees EOF when this process goes away
        return _Worker(process, mine)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the first worker has run its initializer; raise what it raised (the pool closed then).

        A model that cannot be loaded is then an error at start-up, before the server answers anything.
        """
        worker = self.workers[0]
        try:
            if not worker.conn.poll(timeout):
                raise SpectroError(f"the first worker process did not start within {timeout:.0f} s")
            try:
                status, value = worker.conn.recv()
            except (EOFError, OSError):
                raise SpectroError("a worker process stopped while loading the model "
                                   f"(exit status {worker.process.exitcode})") from None
            if status == "error":
                raise value
        except BaseException:
            self.close()
            raise
        worker.ready = True

    def _idle_queue(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._idle is None or self._loop is not loop:  # first call, or a new event loop (between test clients)
            self._idle, self._loop = asyncio.Queue(), loop
            for worker in self.workers:
                self._idle.put_nowait(worker)
        return self._idle

    async def call(self, function, *args, timeout: float | None = None) -> Any:
        """``function(*args)`` in an idle worker process; its value, or its exception raised here.

        ``timeout``: seconds from now, waiting for an idle worker included, after which the call fails with
        :class:`DeadlineExceeded` (and a worker still running it is killed and replaced).
        """
        if self._closed:
            raise WorkerDied("the server is shutting down")
        idle = self._idle_queue()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            worker = await asyncio.wait_for(idle.get(), timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"no worker was free within {timeout:g} s: every worker was busy") from None
        # shielded: a cancelled request still lets the worker finish (or reach the deadline) and hand its answer
        # over, so no later call ever reads an answer meant for another
        status, value = await asyncio.shield(self._exchange(worker, idle, function, args, deadline))
        if status == "error":
            raise value
        return value

    async def _exchange(self, worker: _Worker, idle: asyncio.Queue, function, args,
                        deadline: float | None = None) -> tuple[str, Any]:
        try:
            if not worker.ready:
                try:
                    status, value = await self._receive(worker, deadline)
                except asyncio.TimeoutError:  # still loading the model: left to finish, for the next call
                    return "error", DeadlineExceeded("a worker process was still starting")
                if status == "error":
                    return status, value
                worker.ready = True
            worker.conn.send((function, args))
            return await self._receive(worker, deadline)
        except asyncio.TimeoutError:
            worker = self._replace(worker)
            return "error", DeadlineExceeded("its worker process was stopped and replaced")
        except (EOFError, OSError):
            worker = self._replace(worker)
            return "error", WorkerDied("a worker process of the server stopped while answering; it was replaced, "
                                       "send the request again")
        finally:
            idle.put_nowait(worker)

    async def _receive(self, worker: _Worker, deadline: float | None = None) -> tuple[str, Any]:
        """The worker's next message, once its pipe is readable; ``asyncio.TimeoutError`` at ``deadline`` (the
        event loop's clock)."""
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        fd = worker.conn.fileno()
        loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
        try:
            if deadline is None:
                await readable
            else:
                await asyncio.wait_for(readable, max(0.0, deadline - loop.time()))
        finally:
            loop.remove_reader(fd)
        return worker.conn.recv()

    def _replace(self, worker: _Worker) -> _Worker:
        worker.conn.close()
        worker.process.kill()
        worker.process.join(5)
        new = self._start()
        self.workers[self.workers.index(worker)] = new
        return new

    def close(self) -> None:
        """Close the pipes (each worker ends when it sees that) and wait a moment for the processes."""
        self._closed = True
        for worker in self.workers:
            worker.conn.close()
        for worker in self.workers:
            worker.process.join(2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(2)
