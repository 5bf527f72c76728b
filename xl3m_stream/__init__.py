"""xl3m_stream: reason over unbounded token streams with a short-window language model.

A streaming implementation of XL3M (arXiv 2405.17755): each arriving segment is scored by
the model's certainty about the question given the segment; a bounded store keeps the most
relevant segments; on demand the best are spliced in stream order with the question and
answered. Every public name is re-exported here::

    from xl3m_stream import Engine, EngineConfig

    async with Engine(EngineConfig(question="Which service failed?")) as engine:
        await engine.process(source)
        answer = await engine.ask("Which service failed?")
"""

from ._version import __version__
from .config import DEFAULT_MODEL, EngineConfig
from .engine import Answer, Engine, EngineStats, Timings
from .errors import (
    ConfigError,
    EngineClosedError,
    InputError,
    ModelLoadError,
    ReaderError,
    ScoringError,
    StateError,
    Xl3mError,
)
from .events import (
    Alert,
    Answered,
    ErrorEvent,
    Event,
    EventsDropped,
    EventStream,
    SegmentEvicted,
    SegmentKept,
    SegmentScored,
)
from .inference import ContextSegment, KeyContext
from .memory import AgentMemory, SyncAgentMemory
from .metrics import Metrics, export_prometheus
from .monitor import Threshold, WatchStats
from .persistence import RecoveryReport
from .segment import Segment
from .sync import SyncEngine

__all__ = [
    "DEFAULT_MODEL",
    "AgentMemory",
    "Alert",
    "Answer",
    "Answered",
    "ConfigError",
    "ContextSegment",
    "Engine",
    "EngineClosedError",
    "EngineConfig",
    "EngineStats",
    "ErrorEvent",
    "Event",
    "EventStream",
    "EventsDropped",
    "InputError",
    "KeyContext",
    "Metrics",
    "ModelLoadError",
    "ReaderError",
    "RecoveryReport",
    "ScoringError",
    "Segment",
    "SegmentEvicted",
    "SegmentKept",
    "SegmentScored",
    "StateError",
    "SyncAgentMemory",
    "SyncEngine",
    "Threshold",
    "Timings",
    "WatchStats",
    "Xl3mError",
    "__version__",
    "export_prometheus",
]
