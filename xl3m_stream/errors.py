"""The exceptions xl3m_stream raises on purpose.

Every error a user can cause (a bad config value, an unknown model, unusable input)
is one of these, with a one-line message that says what to change. The CLI prints
that line and exits non-zero; it never shows a traceback for them.
"""

from __future__ import annotations


class Xl3mError(Exception):
    """Base class of every error raised on purpose by xl3m_stream."""


class ConfigError(Xl3mError, ValueError):
    """A configuration value is missing, malformed or out of range."""


class ModelLoadError(Xl3mError):
    """A model or tokenizer could not be found or loaded."""


class InputError(Xl3mError, ValueError):
    """Input the engine cannot use (a question longer than the window, a bad path...)."""


class EngineClosedError(Xl3mError, RuntimeError):
    """The engine was used outside its ``async with`` block or after ``close()``."""


class ScoringError(Xl3mError, RuntimeError):
    """Scoring failed on every replica that was tried."""


class StateError(Xl3mError):
    """A state directory is unusable (wrong version, unreadable, locked by another engine)."""


class ReaderError(Xl3mError, RuntimeError):
    """The reader could not write an answer (a remote reader's server refused, failed or timed
    out). The stream is unaffected: the engine keeps ingesting and a later ``ask`` may work."""
