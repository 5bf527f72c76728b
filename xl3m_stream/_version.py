"""The library's version, in a module of its own: importable without the package root (whose
imports include the engine), e.g. by ``persistence.statedir`` when it writes ``meta.json``."""

__version__ = "0.1.0"
