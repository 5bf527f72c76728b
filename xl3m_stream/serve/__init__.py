"""``xl3m-stream serve``: named streams over HTTP, with an OpenAI-compatible face.

Why Starlette on uvicorn: the engine is anyio-native (it runs under asyncio and trio), and
Starlette is a thin anyio-native ASGI toolkit, so an engine's task group, its backpressure and
its event streams live on the server's own event loop without a bridge or extra threads;
uvicorn gives a production HTTP/1.1 server with graceful shutdown on SIGTERM/SIGINT (stop
accepting, let in-flight requests finish, then the application's lifespan closes every
engine). Nothing heavier (validation frameworks, OpenAPI generators) is needed: request
bodies are decoded with msgspec, which the engine already uses.

Modules: :mod:`.app` (routes and the application), :mod:`.streams` (the registry of named
engines), :mod:`.auth` (bearer token and body size), :mod:`.sse` (server-sent events),
:mod:`.openai_api` (``/v1/models``, ``/v1/chat/completions``), :mod:`.prom` (the Prometheus
text format). Imported only by the ``serve`` command: ``import xl3m_stream`` never imports
Starlette. Install with ``pip install 'xl3m-stream[serve]'``.
"""

from __future__ import annotations

from .app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
