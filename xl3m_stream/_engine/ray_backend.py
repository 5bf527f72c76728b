"""The Ray scoring backend (``EngineConfig.backend="ray"``): scoring batches run in Ray actors.

Each actor (:class:`ScoringActor`) loads its own scorer from the engine's model spec and does
one thing: ``score(token_lists, questions)``, the local scorer's ``score_many`` result. The
engine stays the one coordinator: intake, store, persistence, the dense embedder and the reader
stay in its process, on its local :class:`~xl3m_stream.devices.DevicePool`; only
:meth:`RayDispatcher.score_many` moves out. Ray is imported here only inside functions, so
``import xl3m_stream`` never imports it.

Faults: a batch whose actor died (killed, crashed, its node gone) is sent again to another live
actor, or to the same one once Ray has restarted it (``MAX_RESTARTS`` per actor), and reported
as an :class:`~xl3m_stream.events.ErrorEvent`. Scoring is a pure function, so sending again is
safe, and only the first result that comes back is returned. When every actor is gone the
batch fails with a :class:`~xl3m_stream.errors.ScoringError` at once; while they are being
restarted it waits at most ``RESTART_WAIT_S`` for one, and never longer than ``CALL_TIMEOUT_S``
on one call.

Ray's lifetime: a Ray this module started (none was initialised in the process) is shut down
when the last engine using it closes; a Ray initialised by someone else is left running.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..config import EngineConfig
from ..devices import DevicePool
from ..errors import ConfigError, ModelLoadError, ScoringError
from ..events import ErrorEvent, Event
from ..segment import Segment
from .dispatch import Dispatcher, Scores

log = logging.getLogger("xl3m_stream.engine")

MAX_RESTARTS = 3
"""Times Ray restarts a dead actor; past it the actor is dead for good."""
RESTART_WAIT_S = 120.0
"""Longest a batch waits for an actor to come back (restarting: loading its scorer) once every
live actor has failed it; then it fails."""
RETRY_PAUSE_S = 0.25
"""Pause before trying the actors again (doubled each time, at most 5 s)."""
CALL_TIMEOUT_S = 600.0
"""Longest wait for one batch's result (an actor that never answers counts as failed)."""
READY_TIMEOUT_S = 600.0
"""Longest wait for the actors to load their scorers at start."""
CONNECT_TIMEOUT_S = 5.0
"""How long a ``HOST:PORT`` ray_address may take to accept a TCP connection before ``ray.init``."""

_lock = threading.Lock()
_users = 0  # engines using the Ray this module initialised
_started_here = False


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("backend='ray' needs Ray: pip install 'xl3m-stream[ray]'") from None
    return ray


def scoring_config(config: EngineConfig, device: str) -> EngineConfig:
    """``config`` narrowed to what a scoring actor loads: the scorer on ``device``, no separate
    reader (the scorer model reads, so no second model), no embedder, nothing remote."""
    return config.replace(
        devices=[device],
        reader_model=None,
        reader_base_url=None,
        reader_api_key=None,
        relevance=["certainty"],
        backend="local",
        ray_address=None,
        workers=None,
        state_dir=None,
    )


class ScoringActor:
    """One scorer replica in a Ray worker process (made a Ray actor by :meth:`RayWorkers.start`)."""

    def __init__(self, config: dict[str, Any], device: str) -> None:
        pool = DevicePool.load(scoring_config(EngineConfig.from_dict(config), device))
        self._scorer = pool.first.scorer
        self._device = device
        self._crash: str | None = None

    def ready(self) -> str:
        return f"pid {os.getpid()} on {self._device}"

    def score(self, token_lists: list[Sequence[int]], questions: list[Sequence[int]]) -> list[Scores]:
        """The local scorer's ``score_many``: ``result[j][i]``, segment i against question j."""
        if self._crash == "exit":
            os._exit(1)  # the test hook: this worker process dies mid-batch
        if self._crash == "stall":
            time.sleep(3600)  # the test hook: a batch that stays in flight until the actor is killed
        scorer = self._scorer
        scores = scorer.score_many(token_lists, [scorer.prepare(q) for q in questions])
        return [[{k: float(v) for k, v in one.items()} for one in per_question] for per_question in scores]

    def _crash_next(self, how: str = "exit") -> None:
        """Tests only: the next ``score`` call kills this worker process (``"exit"``:
        ``os._exit(1)``) or never returns (``"stall"``: until the actor is killed)."""
        self._crash = how


@dataclass
class Worker:
    """One actor and its counters."""

    index: int
    actor: Any  # ray.actor.ActorHandle
    inflight: int = 0
    batches: int = 0
    tokens: int = 0
    failures: int = 0
    """Failed calls (the actor died or was restarting, the scorer raised, a timeout)."""
    dead: bool = False
    """Ray said the actor died for good (``ActorDiedError``: its restarts are spent)."""


@dataclass
class RayWorkers:
    """The scoring actors of one engine, and whether it holds a share of a Ray it started."""

    workers: list[Worker]
    use_gpu: bool
    owns_ray: bool
    per_worker: int
    """Batches in flight per actor: ``device_concurrency`` running, one more waiting at the
    actor so it does not idle on the round trip."""
    closed: bool = field(default=False)

    @classmethod
    def start(cls, config: EngineConfig) -> RayWorkers:
        """Connect to (or start) Ray, check its resources, start the actors and wait until each
        has loaded its scorer. Blocking: run it in a thread."""
        ray = _ray()
        owns = _acquire_ray(ray, config)
        actors: list[Any] = []
        try:
            use_gpu, n = _plan(config, ray.cluster_resources())
            options: dict[str, Any] = dict(
                max_restarts=MAX_RESTARTS, max_task_retries=0, max_concurrency=config.device_concurrency
            )
            if use_gpu:
                options.update(num_gpus=1, num_cpus=0)
            else:
                options.update(num_cpus=1)
            actor_class = ray.remote(ScoringActor).options(**options)
            values = config.to_dict()
            device = "cuda:0" if use_gpu else "cpu"  # an actor sees only the GPU Ray gave it
            actors = [actor_class.remote(values, device) for _ in range(n)]
            try:
                where = ray.get([a.ready.remote() for a in actors], timeout=READY_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                raise ModelLoadError(
                    f"Ray workers: not all {n} loaded the scorer within {READY_TIMEOUT_S:.0f} s"
                ) from None
            except ray.exceptions.RayError as exc:
                raise ModelLoadError(f"a Ray worker could not load the scorer {config.model!r}: {exc}") from None
            log.info("ray backend: %d worker(s): %s", n, ", ".join(where))
        except BaseException:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            _release_ray(ray, owns)
            raise
        return cls([Worker(i, a) for i, a in enumerate(actors)], use_gpu, owns, config.device_concurrency + 1)

    def __len__(self) -> int:
        return len(self.workers)

    def pick(self, exclude: Sequence[int] = ()) -> Worker | None:
        """The live worker with the least in flight (ties: lowest index) not in ``exclude``."""
        live = [w for w in self.workers if not w.dead and w.index not in exclude]
        return min(live, key=lambda w: (w.inflight, w.index)) if live else None

    def close(self) -> None:
        """Kill the actors and leave Ray (shut down if this module started it and no engine
        uses it any more). Blocking: run it in a thread."""
        if self.closed:
            return
        self.closed = True
        ray = _ray()
        if ray.is_initialized():
            for w in self.workers:
                ray.kill(w.actor, no_restart=True)
        _release_ray(ray, self.owns_ray)


class RayDispatcher(Dispatcher):
    """A :class:`Dispatcher` whose ``score_many`` runs on Ray actors; ``embed`` (and the
    threads it needs) stays on the coordinator's local pool."""

    def __init__(
        self,
        pool: DevicePool,
        workers: RayWorkers,
        concurrency: int,
        counters: dict[str, int],
        report: Callable[[Event], None],
    ) -> None:
        super().__init__(pool, concurrency, counters, report)
        self.workers = workers
        self.slots = anyio.Semaphore(workers.per_worker * len(workers))

    async def score_many(self, segments: list[Segment], questions: list[tuple[int, ...]]) -> list[Scores]:
        """As :meth:`Dispatcher.score_many`, on the actors: a batch whose actor died is sent again
        (another live actor first); ScoringError when none is left to score it."""
        ray = _ray()
        token_lists = [s.tokens for s in segments]
        last: BaseException | None = None
        reported: set[int] = set()  # one ErrorEvent per worker and batch, however often it is retried
        deadline, pause = time.monotonic() + RESTART_WAIT_S, RETRY_PAUSE_S
        while True:
            tried: list[int] = []
            while (worker := self.workers.pick(exclude=tried)) is not None:
                tried.append(worker.index)
                try:
                    return await self._score_on_worker(ray, worker, token_lists, questions)
                except Exception as exc:
                    last = exc
                    worker.failures += 1
                    worker.dead = worker.dead or isinstance(exc, ray.exceptions.ActorDiedError)
                    if worker.index not in reported:
                        reported.add(worker.index)
                        self._failed(worker, segments, exc)
            if last is not None and not _is_actor_fault(ray, last):
                break  # the scorer itself raised: trying again would raise again
            if self.workers.pick() is None or time.monotonic() + pause > deadline:
                break  # every actor is dead for good, or none came back in time
            await anyio.sleep(pause)  # Ray restarts the actors meanwhile
            pause = min(2 * pause, 5.0)
        if len(segments) > 1 and last is not None and not _is_actor_fault(ray, last):
            half = len(segments) // 2  # e.g. out of memory on the actor's device: smaller batches may fit
            first = await self.score_many(segments[:half], questions)
            second = await self.score_many(segments[half:], questions)
            return [a + b for a, b in zip(first, second)]
        alive = sum(not w.dead for w in self.workers.workers)
        why = f"{type(last).__name__}: {last}" if last is not None else "no worker left to try"
        raise ScoringError(f"scoring failed on every Ray worker ({alive} of {len(self.workers)} alive): {why}")

    def _failed(self, worker: Worker, segments: list[Segment], exc: BaseException) -> None:
        self._counters["errors"] += 1
        log.warning("scoring failed on Ray worker %d: %s: %s", worker.index, type(exc).__name__, exc)
        self._report(
            ErrorEvent(
                time=time.time(),
                kind="scoring",
                message=f"{type(exc).__name__}: {exc}",
                seqs=[s.seq for s in segments],
                replica=worker.index,
                retrying=True,
            )
        )

    async def _score_on_worker(
        self, ray: Any, worker: Worker, token_lists: list[tuple[int, ...]], questions: list[tuple[int, ...]]
    ) -> list[Scores]:
        worker.inflight += 1
        started = time.perf_counter()
        try:
            ref = worker.actor.score.remote(token_lists, questions)
            if _under_trio():  # trio cannot await an ObjectRef: wait in a thread
                get = functools.partial(ray.get, ref, timeout=CALL_TIMEOUT_S)
                result = await anyio.to_thread.run_sync(get, abandon_on_cancel=True)
            else:
                try:
                    with anyio.fail_after(CALL_TIMEOUT_S):
                        result = await ref
                except TimeoutError:
                    raise ray.exceptions.GetTimeoutError(f"no result within {CALL_TIMEOUT_S:.0f} s") from None
        finally:
            worker.inflight -= 1
            elapsed = time.perf_counter() - started
            self.seconds += elapsed
            self.latency.observe(elapsed)
        worker.batches += 1
        worker.tokens += sum(len(t) for t in token_lists)
        return result

    async def aclose(self) -> None:
        await super().aclose()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.workers.close)


def _is_actor_fault(ray: Any, exc: BaseException) -> bool:
    """The actor died or could not be reached (worth sending again), not the scorer raising."""
    return isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError))


def _under_trio() -> bool:
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def _plan(config: EngineConfig, resources: dict[str, float]) -> tuple[bool, int]:
    """Whether the actors take GPUs, and how many actors; ConfigError when the cluster lacks them."""
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    wants_cuda = any(d.startswith("cuda") for d in config.devices)
    use_gpu = wants_cuda or ("auto" in config.devices and gpus > 0)
    n = config.workers if config.workers is not None else max(gpus, 1) if use_gpu else 1
    if use_gpu and n > gpus:
        raise ConfigError(f"workers={n} need {n} GPU(s), one each, but the Ray cluster has {gpus}")
    if not use_gpu and n > cpus:
        raise ConfigError(f"workers={n} need {n} CPU(s), one each, but the Ray cluster has {cpus}")
    return use_gpu, n


def _acquire_ray(ray: Any, config: EngineConfig) -> bool:
    """Make sure Ray is initialised in this process; True when this engine holds a share of a
    Ray this module started (see :func:`_release_ray`)."""
    global _users, _started_here
    with _lock:
        if ray.is_initialized():
            if _started_here:
                _users += 1
                return True
            return False  # someone else's Ray: use it, never shut it down
        address = config.ray_address
        kwargs: dict[str, Any] = dict(ignore_reinit_error=True, log_to_driver=False)
        if address is None:  # a local Ray, sized so the asked CPU workers fit
            kwargs.update(num_cpus=max(os.cpu_count() or 1, config.workers or 1), include_dashboard=False)
        else:
            _check_reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:
            where = f"ray_address {address!r}" if address is not None else "starting a local Ray"
            raise ConfigError(f"{where}: {type(exc).__name__}: {exc}") from None
        _started_here, _users = True, 1
        return True


def _release_ray(ray: Any, owns: bool) -> None:
    global _users, _started_here
    if not owns:
        return
    with _lock:
        _users -= 1
        if _users == 0 and _started_here:
            _started_here = False
            ray.shutdown()


def _check_reachable(address: str) -> None:
    """A ``HOST:PORT`` or ``ray://HOST:PORT`` address must accept a connection within
    ``CONNECT_TIMEOUT_S`` (``ray.init`` itself may retry for a long time)."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local": ray.init knows what they mean
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"ray_address {address!r}: cannot connect to the Ray cluster: {exc}") from None
