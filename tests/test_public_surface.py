"""The public surface, pinned literally: ``xl3m_stream.__all__``, the classes and functions it
exports (methods with their signatures, struct fields with types and defaults), the
``EngineConfig`` fields, the public modules and every name the repository's examples,
benchmarks, scripts and Markdown code blocks import from them.

Code is about to be moved between modules: a move that changes what users import or call shows
here as a diff against the literal tables below. When a change is meant, regenerate the tables
(``python tests/test_public_surface.py --write``, then ``ruff format``) and review the diff.

Signatures are compared as strings; the package uses ``from __future__ import annotations``, so
annotations are the strings written in the source.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pprint
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

import xl3m_stream

ROOT = Path(__file__).resolve().parent.parent
USER_CODE = ["examples", "benchmarks", "scripts"]
"""Folders whose ``.py`` files (and ``README.md`` plus ``docs/*.md`` code blocks) show how users import."""

PUBLIC_CLASSES = ["Engine", "SyncEngine", "AgentMemory", "SyncAgentMemory"]
"""Classes pinned member by member (also ``EngineConfig``'s fields, and every exported class)."""

_SKIP_DUNDERS = {
    "__annotations__",
    "__dict__",
    "__doc__",
    "__firstlineno__",
    "__hash__",
    "__match_args__",
    "__module__",
    "__orig_bases__",
    "__parameters__",
    "__qualname__",
    "__slots__",
    "__static_attributes__",
    "__weakref__",
}


# --------------------------------------------------------------------------- describing
def _signature(fn: Any) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(?)"


def describe_callable(fn: Any) -> str:
    """``"def (sig) -> ret"``, ``"async def ..."``, ``"async gen ..."`` for a function."""
    if isinstance(fn, staticmethod):
        return "static " + describe_callable(fn.__func__)
    if isinstance(fn, classmethod):
        return "class " + describe_callable(fn.__func__)
    if inspect.isasyncgenfunction(fn):
        kind = "async gen"
    elif inspect.iscoroutinefunction(fn):
        kind = "async def"
    else:
        kind = "def"
    return f"{kind} {_signature(fn)}"


def describe_member(raw: Any) -> str:
    if isinstance(raw, property) or (hasattr(raw, "__get__") and hasattr(raw, "__set_name__")):
        return "property"  # a property or a descriptor reading an attribute (SyncEngine's views)
    if isinstance(raw, (staticmethod, classmethod)) or inspect.isfunction(raw):
        return describe_callable(raw)
    return f"attr {type(raw).__name__}"


def own_members(cls: type) -> dict[str, str]:
    """Public members, and dunders defined in the package, of ``cls`` and its package bases."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("xl3m_stream"):
            continue
        for name, raw in vars(klass).items():
            if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                continue
            if name in _SKIP_DUNDERS or name.startswith("__struct"):
                continue
            if name.startswith("__") and not (inspect.isfunction(raw) or isinstance(raw, (staticmethod, classmethod))):
                continue
            if type(raw).__name__ == "member_descriptor" and issubclass(cls, msgspec.Struct):
                continue  # a struct field: pinned with its type and default in "fields"
            out[name] = describe_member(raw)
    return dict(sorted(out.items()))


def struct_fields(cls: type) -> dict[str, str]:
    """``name: "annotation = default"`` for each field of a msgspec Struct, in order."""
    annotations: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        annotations.update(vars(klass).get("__annotations__", {}))
    out: dict[str, str] = {}
    for f in msgspec.structs.fields(cls):
        if f.default is not msgspec.NODEFAULT:
            default = f" = {f.default!r}"
        elif f.default_factory is not msgspec.NODEFAULT:
            default = f" = factory {f.default_factory()!r}"
        else:
            default = ""
        out[f.name] = f"{annotations.get(f.name)}{default}"
    return out


def describe(obj: Any) -> Any:
    """A literal description of an exported object (a class in full, a function's signature)."""
    if isinstance(obj, type):
        info: dict[str, Any] = {
            "bases": [b.__name__ for b in obj.__mro__[1:] if b is not object],
            "members": own_members(obj),
        }
        if issubclass(obj, msgspec.Struct):
            info["fields"] = struct_fields(obj)
            info["frozen"] = bool(obj.__struct_config__.frozen)
        return info
    if callable(obj):
        return describe_callable(obj)
    return f"value {type(obj).__name__}"


def describe_shallow(obj: Any) -> str:
    """One line for a name a module offers: a function's signature, a class's constructor."""
    if isinstance(obj, type):
        if issubclass(obj, msgspec.Struct):
            return f"struct ({', '.join(f.name for f in msgspec.structs.fields(obj))})"
        return f"class {_signature(obj.__init__)}" if "__init__" in vars(obj) else "class"
    if inspect.ismodule(obj):
        return "module"
    if callable(obj):
        return describe_callable(obj)
    return f"value {type(obj).__name__}"


# --------------------------------------------------------------------------- what users import
def _code_blocks(md: Path) -> list[str]:
    blocks, block, inside = [], [], False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            if inside:
                blocks.append("\n".join(block))
                block, inside = [], False
            elif line.strip() in ("```python", "```py"):
                inside = True
            continue
        if inside:
            block.append(line)
    return blocks


def _sources() -> list[tuple[str, str]]:
    out = []
    for folder in USER_CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            out.append((str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")))
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, block in enumerate(_code_blocks(md)):
            out.append((f"{md.relative_to(ROOT)}#{i}", block))
    return out


def imported_names() -> dict[str, list[str]]:
    """``{module: [names]}`` imported from the package by user code: ``from m import n``, and
    ``m.n`` attribute reads on a package module imported whole (``from xl3m_stream import models``)."""
    found: dict[str, set[str]] = {}
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    for where, text in _sources():
        try:
            tree = compile(text, where, "exec", flags=flags, dont_inherit=True)
        except SyntaxError:
            continue  # a block of pseudo-code
        aliases: dict[str, str] = {}  # local name -> package module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "xl3m_stream":
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if _is_module(full):
                        aliases[a.asname or a.name] = full
                        found.setdefault(full, set())
                    else:
                        found.setdefault(node.module, set()).add(a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "xl3m_stream":
                        found.setdefault(a.name, set())
                        if a.asname:
                            aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                found[aliases[node.value.id]].add(node.attr)
    return {m: sorted(n) for m, n in sorted(found.items())}


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def current() -> dict[str, Any]:
    """Everything the literals below pin, computed from the code as it is."""
    from xl3m_stream import EngineConfig, Event

    modules = {m: module_names(m) for m in PUBLIC_MODULES}
    names: dict[str, dict[str, str]] = {}
    for module, used in imported_names().items():
        mod = importlib.import_module(module)
        names[module] = {n: describe_shallow(getattr(mod, n, None)) if hasattr(mod, n) else "MISSING" for n in used}
    return {
        "all": sorted(xl3m_stream.__all__),
        "exports": {n: describe(getattr(xl3m_stream, n)) for n in sorted(xl3m_stream.__all__) if n != "__version__"},
        "instance_attrs": {n: instance_attributes(n) for n in PUBLIC_CLASSES},
        "config_fields": struct_fields(EngineConfig),
        "events": sorted(c.__name__ for c in _subclasses(Event)),
        "modules": modules,
        "entry_points": entry_points(),
        "imported": names,
    }


def instance_attributes(name: str) -> list[str]:
    """Public attributes an instance of the exported class ``name`` sets in ``__init__`` (built
    with the default config: nothing is loaded before start)."""
    obj = getattr(xl3m_stream, name)()
    return sorted(n for n in vars(obj) if not n.startswith("_"))


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def module_names(module: str) -> list[str]:
    """The names a module offers: its ``__all__``, or else the classes and functions it defines
    and its UPPER_CASE constants (what ``from module import name`` finds there today)."""
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    if names is not None:
        return sorted(names)
    assigned = set()  # constants assigned in the module itself (not imported from another)
    for node in ast.parse(inspect.getsource(mod)).body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        assigned.update(t.id for t in targets if isinstance(t, ast.Name))
    out = []
    for name, obj in vars(mod).items():
        if name.startswith("_") or inspect.ismodule(obj):
            continue
        defined_here = getattr(obj, "__module__", None) == module and (isinstance(obj, type) or inspect.isfunction(obj))
        if defined_here or (name.isupper() and name in assigned):
            out.append(name)
    return sorted(out)


def entry_points() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: ``name: "module:function (signature)"``."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    out = {}
    for name, target in sorted(scripts.items()):
        module, _, attr = target.partition(":")
        out[name] = f"{target} {describe_callable(getattr(importlib.import_module(module), attr))}"
    return out


# --------------------------------------------------------------------------- the pins
PUBLIC_MODULES = [
    "xl3m_stream",
    "xl3m_stream.catalog",
    "xl3m_stream.cli",
    "xl3m_stream.config",
    "xl3m_stream.demo",
    "xl3m_stream.devices",
    "xl3m_stream.embedding",
    "xl3m_stream.engine",
    "xl3m_stream.errors",
    "xl3m_stream.events",
    "xl3m_stream.inference",
    "xl3m_stream.memory",
    "xl3m_stream.metrics",
    "xl3m_stream.models",
    "xl3m_stream.monitor",
    "xl3m_stream.persistence",
    "xl3m_stream.relevance",
    "xl3m_stream.remote",
    "xl3m_stream.running",
    "xl3m_stream.scoring",
    "xl3m_stream.segment",
    "xl3m_stream.segmenter",
    "xl3m_stream.sources",
    "xl3m_stream.store",
    "xl3m_stream.sync",
    "xl3m_stream.testing",
    "xl3m_stream.tokenizer",
    "xl3m_stream.workers",
    "xl3m_stream.evaluate",
    "xl3m_stream.evaluate.baselines",
    "xl3m_stream.evaluate.haystack",
    "xl3m_stream.evaluate.metrics",
    "xl3m_stream.evaluate.realtext",
    "xl3m_stream.evaluate.report",
    "xl3m_stream.evaluate.runner",
    "xl3m_stream.evaluate.tasks",
]
EXPECTED_ALL: list[str] = [
    "AgentMemory",
    "Alert",
    "Answer",
    "Answered",
    "ConfigError",
    "ContextSegment",
    "DEFAULT_MODEL",
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
EXPECTED_EXPORTS: dict[str, Any] = {
    "AgentMemory": {
        "bases": [],
        "members": {
            "__aenter__": "async def (self) -> 'AgentMemory'",
            "__aexit__": "async def (self, *exc: 'object') -> 'None'",
            "__init__": "def (self, config: 'EngineConfig | None' = None, **overrides: 'Any') -> 'None'",
            "aclose": "async def (self) -> 'None'",
            "add": "async def (self, text: 'str', role: 'str | None' = None) -> 'int'",
            "add_document": "async def (self, text: 'str', name: 'str | None' = None) -> 'int'",
            "answer": "async def (self, question: 'str', *, max_new_tokens: 'int | None' = None) -> 'Answer'",
            "config": "property",
            "engine": "property",
            "extend": "async def (self, turns: 'Iterable[Any] | AsyncIterable[Any]') -> 'int'",
            "messages": "property",
            "recall": "async def (self, question: 'str') -> 'KeyContext'",
            "tokens": "property",
        },
    },
    "Alert": {
        "bases": ["Event", "Struct", "_StructMixin"],
        "members": {},
        "fields": {
            "time": "float",
            "question": "str",
            "question_index": "int",
            "seq": "int",
            "start": "int",
            "end": "int",
            "score": "float",
            "threshold": "float",
            "text": "str",
            "meta": "dict[str, Any] | None = None",
            "explanation": "str | None = None",
            "measure": "str | None = None",
            "scores": "dict[str, float] = factory {}",
            "overlap": "float | None = None",
        },
        "frozen": True,
    },
    "Answer": {
        "bases": ["Struct", "_StructMixin"],
        "members": {},
        "fields": {
            "text": "str",
            "question": "str",
            "segments": "list[ContextSegment]",
            "context_tokens": "int",
            "stream_tokens": "int",
            "rescored": "int",
            "timings": "Timings",
            "model": "str",
        },
        "frozen": True,
    },
    "Answered": {
        "bases": ["Event", "Struct", "_StructMixin"],
        "members": {},
        "fields": {"time": "float", "question": "str", "seconds": "float", "segments": "list[int]"},
        "frozen": True,
    },
    "ConfigError": {"bases": ["Xl3mError", "ValueError", "Exception", "BaseException"], "members": {}},
    "ContextSegment": {
        "bases": ["Struct", "_StructMixin"],
        "members": {},
        "fields": {
            "seq": "int",
            "start": "int",
            "end": "int",
            "score": "float | None",
            "text": "str",
            "local": "bool = False",
            "meta": "dict[str, Any] | None = None",
        },
        "frozen": True,
    },
    "DEFAULT_MODEL": "value str",
    "Engine": {
        "bases": [],
        "members": {
            "__aenter__": "async def (self) -> 'Engine'",
            "__aexit__": "async def (self, *exc: 'object') -> 'None'",
            "__init__": "def (self, config: 'EngineConfig | None' = None, *, model: 'Any' = "
            "None, tokenizer: 'Any' = None, **overrides: 'Any') -> 'None'",
            "aclose": "async def (self) -> 'None'",
            "answer_with": "async def (self, segments: 'Sequence[Segment]', question: 'str', *, "
            "scores: 'Sequence[float | None] | None' = None, max_new_tokens: 'int "
            "| None' = None, budget: 'int | None' = None) -> 'Answer'",
            "ask": "async def (self, question: 'str | None' = None, *, rescore: 'str | None' = "
            "None, max_new_tokens: 'int | None' = None) -> 'Answer'",
            "ask_stream": "async gen (self, question: 'str | None' = None, *, rescore: 'str | "
            "None' = None, max_new_tokens: 'int | None' = None) -> "
            "'AsyncIterator[str]'",
            "budget_for": "def (self, question: 'str', *, max_new_tokens: 'int | None' = None, "
            "whole_window: 'bool' = False) -> 'int'",
            "chars_taken": "property",
            "checkpoint": "async def (self) -> 'None'",
            "drain": "async def (self) -> 'None'",
            "events": "def (self) -> 'EventStream'",
            "explained": "async def (self) -> 'None'",
            "failed_segments": "property",
            "feed": "async def (self, data: 'str | bytes | Sequence[int] | Any') -> 'int'",
            "flush": "async def (self) -> 'int'",
            "input_mark": "property",
            "input_resume": "def (self, source: 'str') -> 'tuple[InputMark | None, int]'",
            "key_context": "async def (self, question: 'str | None' = None, *, rescore: 'str | "
            "None' = None) -> 'KeyContext'",
            "mark_input": "async def (self, source: 'str', taken: 'int', *, complete: 'bool' = "
            "False, digest: 'str' = '') -> 'InputMark'",
            "metrics": "def (self) -> 'Metrics'",
            "model_name": "property",
            "model_window": "property",
            "process": "async def (self, source: 'AsyncIterable[Any] | Iterable[Any]', *, flush: "
            "'bool' = True) -> 'int'",
            "reader_name": "property",
            "reader_tokens": "def (self, text: 'str') -> 'int'",
            "reader_window": "property",
            "recovery": "property",
            "replicas": "property",
            "rescan": "async def (self, question: 'str | None' = None) -> 'int'",
            "set_question": "async def (self, question: 'str | None') -> 'None'",
            "stats": "def (self) -> 'EngineStats'",
            "store": "property",
            "stream_tokens": "property",
            "tokenizer": "property",
            "unwatch": "def (self, watch_id: 'int') -> 'None'",
            "wait_for_room": "async def (self) -> 'None'",
            "watch": "def (self, question: 'str', *, threshold: 'str | float | Threshold' = "
            "'auto', measure: 'str' = 'nll', warmup: 'int | None' = None, cooldown: "
            "'int' = 1, min_score: 'float | None' = None, min_overlap: \"float | "
            "Literal['auto'] | None\" = 'auto', explain: 'bool' = False) -> "
            "'int'",
            "watches": "def (self) -> 'list[WatchStats]'",
        },
    },
    "EngineClosedError": {"bases": ["Xl3mError", "RuntimeError", "Exception", "BaseException"], "members": {}},
    "EngineConfig": {
        "bases": ["Struct", "_StructMixin"],
        "members": {
            "__post_init__": "def (self) -> 'None'",
            "__repr__": "def (self) -> 'str'",
            "__rich_repr__": "def (self) -> 'Any'",
            "from_dict": "class def (cls, values: 'dict[str, Any]') -> 'EngineConfig'",
            "from_env": "class def (cls, base: 'EngineConfig | None' = None, environ: "
            "'dict[str, str] | None' = None) -> 'EngineConfig'",
            "from_file": "class def (cls, path: 'str | os.PathLike[str]') -> 'EngineConfig'",
            "overlap_tokens": "property",
            "redacted": "def (self) -> 'dict[str, Any]'",
            "replace": "def (self, **changes: 'Any') -> 'EngineConfig'",
            "to_dict": "def (self) -> 'dict[str, Any]'",
        },
        "fields": {
            "model": "str = 'smollm2-135m-instruct'",
            "reader_model": "str | None = 'auto'",
            "devices": "Annotated[list[str], Meta(min_length=1)] = factory ['auto']",
            "dtype": "Dtype = 'auto'",
            "device_concurrency": "Annotated[int, Meta(ge=1, le=64)] = 1",
            "trust_remote_code": "bool = False",
            "allow_download": "bool = False",
            "compile": "Literal['never', 'auto', 'always'] = 'never'",
            "backend": "Literal['local', 'ray'] = 'local'",
            "ray_address": "str | None = None",
            "workers": "Annotated[int, Meta(ge=1, le=256)] | None = None",
            "segment_tokens": "Annotated[int, Meta(ge=8, le=32768)] = 256",
            "segment_overlap": "NonNegInt | Literal['auto'] = 'auto'",
            "segment_cut": "Literal['tokens', 'lines'] = 'tokens'",
            "question": "str | None = None",
            "question_tokens": "Annotated[int, Meta(ge=1, le=4096)] = 32",
            "max_question_tokens": "Annotated[int, Meta(ge=1, le=32768)] = 256",
            "measure": "Measure = 'nll'",
            "relevance": "Annotated[list[Literal['certainty', 'lexical', 'dense']], "
            "Meta(min_length=1)] = factory ['certainty', 'lexical', 'dense']",
            "embedder": "str = 'minilm'",
            "tgain_top": "Annotated[int, Meta(ge=1, le=1024)] = 3",
            "batch_size": "Annotated[int, Meta(ge=1, le=4096)] = 8",
            "batch_wait_ms": "Annotated[float, Meta(ge=0, le=60000)] = 20.0",
            "max_pending_segments": "Annotated[int, Meta(ge=1, le=1000000)] = 64",
            "store_segments": "Annotated[int, Meta(ge=1, le=10000000)] = 64",
            "store_tokens": "Annotated[int, Meta(ge=1)] | None = None",
            "context_tokens": "Annotated[int, Meta(ge=1)] = 2048",
            "local_window_tokens": "NonNegInt = 0",
            "rescore": "Literal['auto', 'always', 'never'] = 'auto'",
            "max_new_tokens": "Annotated[int, Meta(ge=1, le=32768)] = 64",
            "temperature": "Annotated[float, Meta(ge=0, le=10)] = 0.0",
            "stop": "list[str] | None = None",
            "reader_prompt": "Literal['auto', 'plain', 'chat'] = 'auto'",
            "answer_style": "Literal['short', 'free'] = 'short'",
            "reader_window": "Annotated[int, Meta(ge=16)] | None = None",
            "reader_base_url": "str | None = None",
            "reader_api_key": "str | None = None",
            "reader_timeout_s": "Annotated[float, Meta(gt=0, le=3600)] = 60.0",
            "reader_attempts": "Annotated[int, Meta(ge=1, le=20)] = 4",
            "reader_concurrency": "Annotated[int, Meta(ge=1, le=256)] | None = None",
            "events_buffer": "Annotated[int, Meta(ge=1, le=10000000)] = 1024",
            "seed": "NonNegInt = 0",
            "state_dir": "str | None = None",
            "fsync": "Literal['always', 'interval', 'never'] = 'interval'",
            "fsync_interval_s": "Annotated[float, Meta(gt=0, le=3600)] = 1.0",
            "snapshot_every_s": "Annotated[float, Meta(gt=0, le=86400)] = 30.0",
            "snapshot_every_segments": "Annotated[int, Meta(ge=1, le=10000000)] = 256",
        },
        "frozen": True,
    },
    "EngineStats": {
        "bases": ["Struct", "_StructMixin"],
        "members": {"of": "class def (cls, metrics: 'Metrics') -> 'EngineStats'"},
        "fields": {
            "tokens_in": "int",
            "segments_cut": "int",
            "segments_scored": "int",
            "segments_failed": "int",
            "batches": "int",
            "pending_segments": "int",
            "inflight_batches": "int",
            "store_segments": "int",
            "store_tokens": "int",
            "scoring_seconds": "float",
            "scored_tokens": "int",
            "asks": "int",
            "errors": "int",
        },
        "frozen": True,
    },
    "ErrorEvent": {
        "bases": ["Event", "Struct", "_StructMixin"],
        "members": {},
        "fields": {
            "time": "float",
            "kind": "str",
            "message": "str",
            "seqs": "list[int] = factory []",
            "replica": "int | None = None",
            "retrying": "bool = False",
        },
        "frozen": True,
    },
    "Event": {"bases": ["Struct", "_StructMixin"], "members": {}, "fields": {"time": "float"}, "frozen": True},
    "EventStream": {
        "bases": [],
        "members": {
            "__aenter__": "async def (self) -> 'EventStream'",
            "__aexit__": "async def (self, *exc: 'object') -> 'None'",
            "__aiter__": "def (self) -> 'EventStream'",
            "__anext__": "async def (self) -> 'Event'",
            "__init__": "def (self, maxlen: 'int', on_close: 'Any' = None) -> 'None'",
            "aclose": "async def (self) -> 'None'",
            "close": "def (self) -> 'None'",
            "put": "def (self, event: 'Event') -> 'None'",
        },
    },
    "EventsDropped": {
        "bases": ["Event", "Struct", "_StructMixin"],
        "members": {},
        "fields": {"time": "float", "count": "int"},
        "frozen": True,
    },
    "InputError": {"bases": ["Xl3mError", "ValueError", "Exception", "BaseException"], "members": {}},
    "KeyContext": {
        "bases": ["Struct", "_StructMixin"],
        "members": {"prompt": "def (self) -> 'str'"},
        "fields": {
            "question": "str",
            "segments": "list[ContextSegment]",
            "text": "str",
            "tokens": "int",
            "stream_tokens": "int",
            "budget": "int",
        },
        "frozen": True,
    },
    "Metrics": {
        "bases": ["Struct", "_StructMixin"],
        "members": {},
        "fields": {
            "time": "float",
            "tokens_in": "int",
            "segments_cut": "int",
            "segments_scored": "int",
            "segments_failed": "int",
            "scored_tokens": "int",
            "batches": "int",
            "queue_depth": "int",
            "inflight_batches": "int",
            "store_segments": "int",
            "store_tokens": "int",
            "scoring_seconds": "float",
            "scoring_latency": "Latency",
            "watches": "int",
            "alerts": "int",
            "asks": "int",
            "errors": "int",
        },
        "frozen": True,
    },
    "ModelLoadError": {"bases": ["Xl3mError", "Exception", "BaseException"], "members": {}},
    "ReaderError": {"bases": ["Xl3mError", "RuntimeError", "Exception", "BaseException"], "members": {}},
    "RecoveryReport": {
        "bases": ["Struct", "_StructMixin"],
        "members": {"notes": "def (self) -> 'list[str]'"},
        "fields": {
            "state_dir": "str",
            "created": "bool = False",
            "snapshot": "str | None = None",
            "snapshot_records": "int = 0",
            "replayed_records": "int = 0",
            "requeued_segments": "int = 0",
            "tokens": "int = 0",
            "chars": "int = 0",
            "log_bytes": "int = 0",
            "skipped_snapshots": "list[str] = factory []",
            "dropped_bytes": "int = 0",
            "dropped_at": "int | None = None",
            "dropped_reason": "str | None = None",
            "dropped_saved_to": "str | None = None",
            "model_changed": "bool = False",
            "upgraded_from": "int | None = None",
            "seconds": "float = 0.0",
        },
        "frozen": False,
    },
    "ScoringError": {"bases": ["Xl3mError", "RuntimeError", "Exception", "BaseException"], "members": {}},
    "Segment": {
        "bases": ["Struct", "_StructMixin"],
        "members": {"__post_init__": "def (self) -> 'None'", "n_tokens": "property"},
        "fields": {
            "seq": "int",
            "start": "int",
            "end": "int",
            "tokens": "tuple[int, ...]",
            "meta": "dict[str, Any] | None = None",
        },
        "frozen": True,
    },
    "SegmentEvicted": {
        "bases": ["Event", "Struct", "_StructMixin"],
        "members": {},
        "fields": {"time": "float", "seq": "int", "start": "int", "end": "int", "score": "float"},
        "frozen": True,
    },
    "SegmentKept": {
        "bases": ["Event", "Struct", "_StructMixin"],
        "members": {},
        "fields": {"time": "float", "seq": "int", "start": "int", "end": "int", "score": "float"},
        "frozen": True,
    },
    "SegmentScored": {
        "bases": ["Event", "Struct", "_StructMixin"],
        "members": {},
        "fields": {
            "time": "float",
            "seq": "int",
            "start": "int",
            "end": "int",
            "score": "float",
            "scores": "dict[str, float]",
            "question_id": "int",
        },
        "frozen": True,
    },
    "StateError": {"bases": ["Xl3mError", "Exception", "BaseException"], "members": {}},
    "SyncAgentMemory": {
        "bases": [],
        "members": {
            "__enter__": "def (self) -> 'SyncAgentMemory'",
            "__exit__": "def (self, *exc: 'object') -> 'None'",
            "__init__": "def (self, config: 'EngineConfig | None' = None, *, backend: "
            "'str' = 'asyncio', **overrides: 'Any') -> 'None'",
            "add": "def (self, text: 'str', role: 'str | None' = None) -> 'int'",
            "add_document": "def (self, text: 'str', name: 'str | None' = None) -> 'int'",
            "answer": "def (self, question: 'str', *, max_new_tokens: 'int | None' = None) -> 'Answer'",
            "close": "def (self) -> 'None'",
            "config": "property",
            "extend": "def (self, turns: 'Iterable[Any]') -> 'int'",
            "memory": "property",
            "messages": "property",
            "recall": "def (self, question: 'str') -> 'KeyContext'",
            "start": "def (self) -> 'SyncAgentMemory'",
            "tokens": "property",
        },
    },
    "SyncEngine": {
        "bases": [],
        "members": {
            "__enter__": "def (self) -> 'SyncEngine'",
            "__exit__": "def (self, *exc: 'object') -> 'None'",
            "__init__": "def (self, config: 'EngineConfig | None' = None, *, model: 'Any' = "
            "None, tokenizer: 'Any' = None, backend: 'str' = 'asyncio', "
            "**overrides: 'Any') -> 'None'",
            "answer_with": "def (self, segments: 'Sequence[Segment]', question: 'str', *, "
            "scores: 'Sequence[float | None] | None' = None, max_new_tokens: "
            "'int | None' = None, budget: 'int | None' = None) -> 'Answer'",
            "ask": "def (self, question: 'str | None' = None, *, rescore: 'str | None' = "
            "None, max_new_tokens: 'int | None' = None) -> 'Answer'",
            "ask_stream": "def (self, question: 'str | None' = None, *, rescore: 'str | "
            "None' = None, max_new_tokens: 'int | None' = None) -> "
            "'Iterator[str]'",
            "budget_for": "def (self, question: 'str', *, max_new_tokens: 'int | None' = "
            "None, whole_window: 'bool' = False) -> 'int'",
            "chars_taken": "property",
            "checkpoint": "def (self) -> 'None'",
            "close": "def (self) -> 'None'",
            "config": "property",
            "decode_stats": "property",
            "drain": "def (self) -> 'None'",
            "engine": "property",
            "events": "def (self) -> 'SyncEventStream'",
            "explained": "def (self) -> 'None'",
            "failed_segments": "property",
            "feed": "def (self, data: 'str | bytes | Sequence[int] | Any') -> 'int'",
            "flush": "def (self) -> 'int'",
            "input_mark": "property",
            "input_resume": "def (self, source: 'str') -> 'tuple[InputMark | None, int]'",
            "key_context": "def (self, question: 'str | None' = None, *, rescore: 'str | None' = None) -> 'KeyContext'",
            "mark_input": "def (self, source: 'str', taken: 'int', *, complete: 'bool' = "
            "False, digest: 'str' = '') -> 'InputMark'",
            "metrics": "def (self) -> 'Metrics'",
            "model_name": "property",
            "model_window": "property",
            "process": "def (self, source: 'AsyncIterable[Any] | Iterable[Any]', *, flush: 'bool' = True) -> 'int'",
            "reader_name": "property",
            "reader_tokens": "def (self, text: 'str') -> 'int'",
            "reader_window": "property",
            "recovery": "property",
            "replicas": "property",
            "rescan": "def (self, question: 'str | None' = None) -> 'int'",
            "set_question": "def (self, question: 'str | None') -> 'None'",
            "start": "def (self) -> 'SyncEngine'",
            "stats": "def (self) -> 'EngineStats'",
            "store": "property",
            "stream_tokens": "property",
            "tokenizer": "property",
            "unwatch": "def (self, watch_id: 'int') -> 'None'",
            "wait_for_room": "def (self) -> 'None'",
            "watch": "def (self, question: 'str', *, threshold: 'str | float | Threshold' = "
            "'auto', measure: 'str' = 'nll', warmup: 'int | None' = None, cooldown: "
            "'int' = 1, min_score: 'float | None' = None, min_overlap: \"float | "
            "Literal['auto'] | None\" = 'auto', explain: 'bool' = False) -> "
            "'int'",
            "watches": "def (self) -> 'list[WatchStats]'",
        },
    },
    "Threshold": {
        "bases": ["Struct", "_StructMixin"],
        "members": {
            "__str__": "def (self) -> 'str'",
            "default_warmup": "def (self) -> 'int'",
            "parse": "class def (cls, spec: 'str | float | Threshold') -> 'Threshold'",
            "relative": "property",
        },
        "fields": {"kind": "Literal['percentile', 'zscore', 'absolute']", "value": "float"},
        "frozen": True,
    },
    "Timings": {
        "bases": ["Struct", "_StructMixin"],
        "members": {},
        "fields": {"wait_s": "float", "rescore_s": "float", "first_token_s": "float | None", "total_s": "float"},
        "frozen": True,
    },
    "WatchStats": {
        "bases": ["Struct", "_StructMixin"],
        "members": {},
        "fields": {
            "id": "int",
            "question": "str",
            "threshold": "str",
            "measure": "str",
            "seen": "int",
            "alerts": "int",
            "suppressed": "int",
            "warming_up": "bool",
            "current_threshold": "float | None",
            "mean": "float | None",
            "std": "float | None",
            "p50": "float | None",
            "p99": "float | None",
            "max": "float | None",
        },
        "frozen": True,
    },
    "Xl3mError": {"bases": ["Exception", "BaseException"], "members": {}},
    "export_prometheus": "def (engine: 'Any', registry: 'Any' = None, *, namespace: 'str' = 'xl3m_stream') -> "
    "'PrometheusCollector'",
}
EXPECTED_INSTANCE_ATTRS: dict[str, list[str]] = {
    "Engine": ["config", "decode_stats"],
    "SyncEngine": [],
    "AgentMemory": [],
    "SyncAgentMemory": [],
}
EXPECTED_CONFIG_FIELDS: dict[str, str] = {
    "model": "str = 'smollm2-135m-instruct'",
    "reader_model": "str | None = 'auto'",
    "devices": "Annotated[list[str], Meta(min_length=1)] = factory ['auto']",
    "dtype": "Dtype = 'auto'",
    "device_concurrency": "Annotated[int, Meta(ge=1, le=64)] = 1",
    "trust_remote_code": "bool = False",
    "allow_download": "bool = False",
    "compile": "Literal['never', 'auto', 'always'] = 'never'",
    "backend": "Literal['local', 'ray'] = 'local'",
    "ray_address": "str | None = None",
    "workers": "Annotated[int, Meta(ge=1, le=256)] | None = None",
    "segment_tokens": "Annotated[int, Meta(ge=8, le=32768)] = 256",
    "segment_overlap": "NonNegInt | Literal['auto'] = 'auto'",
    "segment_cut": "Literal['tokens', 'lines'] = 'tokens'",
    "question": "str | None = None",
    "question_tokens": "Annotated[int, Meta(ge=1, le=4096)] = 32",
    "max_question_tokens": "Annotated[int, Meta(ge=1, le=32768)] = 256",
    "measure": "Measure = 'nll'",
    "relevance": "Annotated[list[Literal['certainty', 'lexical', 'dense']], Meta(min_length=1)] = factory "
    "['certainty', 'lexical', 'dense']",
    "embedder": "str = 'minilm'",
    "tgain_top": "Annotated[int, Meta(ge=1, le=1024)] = 3",
    "batch_size": "Annotated[int, Meta(ge=1, le=4096)] = 8",
    "batch_wait_ms": "Annotated[float, Meta(ge=0, le=60000)] = 20.0",
    "max_pending_segments": "Annotated[int, Meta(ge=1, le=1000000)] = 64",
    "store_segments": "Annotated[int, Meta(ge=1, le=10000000)] = 64",
    "store_tokens": "Annotated[int, Meta(ge=1)] | None = None",
    "context_tokens": "Annotated[int, Meta(ge=1)] = 2048",
    "local_window_tokens": "NonNegInt = 0",
    "rescore": "Literal['auto', 'always', 'never'] = 'auto'",
    "max_new_tokens": "Annotated[int, Meta(ge=1, le=32768)] = 64",
    "temperature": "Annotated[float, Meta(ge=0, le=10)] = 0.0",
    "stop": "list[str] | None = None",
    "reader_prompt": "Literal['auto', 'plain', 'chat'] = 'auto'",
    "answer_style": "Literal['short', 'free'] = 'short'",
    "reader_window": "Annotated[int, Meta(ge=16)] | None = None",
    "reader_base_url": "str | None = None",
    "reader_api_key": "str | None = None",
    "reader_timeout_s": "Annotated[float, Meta(gt=0, le=3600)] = 60.0",
    "reader_attempts": "Annotated[int, Meta(ge=1, le=20)] = 4",
    "reader_concurrency": "Annotated[int, Meta(ge=1, le=256)] | None = None",
    "events_buffer": "Annotated[int, Meta(ge=1, le=10000000)] = 1024",
    "seed": "NonNegInt = 0",
    "state_dir": "str | None = None",
    "fsync": "Literal['always', 'interval', 'never'] = 'interval'",
    "fsync_interval_s": "Annotated[float, Meta(gt=0, le=3600)] = 1.0",
    "snapshot_every_s": "Annotated[float, Meta(gt=0, le=86400)] = 30.0",
    "snapshot_every_segments": "Annotated[int, Meta(ge=1, le=10000000)] = 256",
}
EXPECTED_EVENTS: list[str] = [
    "Alert",
    "Answered",
    "ErrorEvent",
    "EventsDropped",
    "SegmentEvicted",
    "SegmentKept",
    "SegmentScored",
]
EXPECTED_MODULES: dict[str, list[str]] = {
    "xl3m_stream": [
        "AgentMemory",
        "Alert",
        "Answer",
        "Answered",
        "ConfigError",
        "ContextSegment",
        "DEFAULT_MODEL",
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
    ],
    "xl3m_stream.catalog": [
        "CatalogModel",
        "Chunk",
        "DEFAULT_READER",
        "GEMMA3_270M",
        "MODELS",
        "QWEN_CODER_05B",
        "QWEN_CODER_15B",
        "REMOTE_PREFIX",
        "SMOLLM2",
        "find",
        "locate",
        "locate_chunks",
        "package_folders",
        "remote_name",
    ],
    "xl3m_stream.cli": ["EXIT_ERROR", "EXIT_USAGE", "main", "seconds"],
    "xl3m_stream.config": ["DEFAULT_MODEL", "ENV_PREFIX", "EngineConfig", "MEASURES", "REDACTED"],
    "xl3m_stream.demo": ["PasskeyDocument", "passkey_document"],
    "xl3m_stream.devices": ["DevicePool", "Replica", "expand_devices", "reader_spec"],
    "xl3m_stream.embedding": [
        "EMBEDDERS",
        "EMBED_PACKAGE",
        "Embedder",
        "MPNET_PARTS",
        "PASSAGE_WORDS",
        "default_embedder",
        "embed_model_dir",
        "embedder_dir",
        "passages",
        "unpack_split_zip",
    ],
    "xl3m_stream.engine": [
        "Answer",
        "Engine",
        "EngineStats",
        "FEED_SLICE_CHARS",
        "FEED_SLICE_TOKENS",
        "INPUTS_KEPT",
        "MAX_EXPLAINING",
        "MAX_SUBSCRIBERS",
        "QUESTION_KEYS_KEPT",
        "THREAD_TOKENIZE_CHARS",
        "Timings",
    ],
    "xl3m_stream.errors": [
        "ConfigError",
        "EngineClosedError",
        "InputError",
        "ModelLoadError",
        "ReaderError",
        "ScoringError",
        "StateError",
        "Xl3mError",
    ],
    "xl3m_stream.events": [
        "Alert",
        "Answered",
        "ErrorEvent",
        "Event",
        "EventStream",
        "EventsDropped",
        "SegmentEvicted",
        "SegmentKept",
        "SegmentScored",
    ],
    "xl3m_stream.inference": ["ContextSegment", "GAP", "KeyContext", "Reader", "SHORT_ANSWER_INSTRUCTION", "assemble"],
    "xl3m_stream.memory": ["AgentMemory", "MEMORY_DEFAULTS", "SyncAgentMemory"],
    "xl3m_stream.metrics": [
        "EngineStats",
        "LATENCY_BUCKETS",
        "Latency",
        "LatencyRecorder",
        "Metrics",
        "export_prometheus",
    ],
    "xl3m_stream.models": [
        "DEFAULT_MODEL_PIP",
        "LoadedModel",
        "ModelSource",
        "cache_root",
        "converted_dir",
        "default_model_gguf",
        "dtype_name",
        "ensure_converted",
        "join_files",
        "load",
        "load_tokenizer",
        "local_dir",
        "model_window",
        "pick_dtype",
        "prepare",
        "resolve",
        "wrap",
    ],
    "xl3m_stream.monitor": [
        "AUTO",
        "DEFAULT_COOLDOWN",
        "DEFAULT_MIN_OVERLAP",
        "DEFAULT_THRESHOLD",
        "DEFAULT_WATCH_MEASURE",
        "DEFAULT_WINDOW",
        "Decision",
        "FUSED_THRESHOLD",
        "FUSED_THRESHOLDS",
        "Lexicon",
        "Monitor",
        "RunningScores",
        "SIGNAL_MEASURES",
        "Threshold",
        "UNGATED_THRESHOLD",
        "WATCH_MEASURES",
        "Watch",
        "WatchStats",
        "auto_threshold",
        "check_watch_options",
    ],
    "xl3m_stream.persistence": [
        "EngineSnapshot",
        "FLAG_CUT",
        "FLAG_END_DOC",
        "FORMAT_VERSION",
        "Fsync",
        "InputMark",
        "KEEP_SNAPSHOTS",
        "LOCK_NAME",
        "LOG_HEADER",
        "LOG_NAME",
        "Layout",
        "LogReader",
        "MAX_RECORD_BYTES",
        "META_NAME",
        "PendingSegment",
        "READABLE_VERSIONS",
        "RECORD_MAGIC",
        "RecordRef",
        "RecoveryReport",
        "SNAPSHOT_MAGIC",
        "SNAPSHOT_RE",
        "STATE_KIND",
        "StateDir",
        "StateMeta",
        "StreamContents",
        "StreamRecord",
        "TMP_PREFIX",
        "WATCHES_NAME",
        "check_state_dir",
        "decode_ids",
        "encode_ids",
        "frame",
        "read_frame",
        "read_meta",
        "read_snapshot",
        "read_stream",
        "stream_id",
        "tokenizer_fingerprint",
        "write_atomic",
    ],
    "xl3m_stream.relevance": [
        "ANALYZER",
        "ArrivalFusion",
        "COMBINE",
        "LexicalIndex",
        "LexicalState",
        "MIN_STATS",
        "RRF_K",
        "SIGNALS",
        "SPREAD_FLOOR",
        "STOPWORDS",
        "fuse_at_ask",
        "interleaved_rank_fusion",
        "passage_similarity",
        "query_terms",
        "reciprocal_rank_fusion",
        "stem",
        "term_counts",
        "words",
    ],
    "xl3m_stream.remote": [
        "BACKOFF_S",
        "CHAT_OVERHEAD",
        "CONNECT_TIMEOUT_S",
        "DEFAULT_BASE_URL",
        "DEFAULT_WINDOW",
        "MAX_BACKOFF_S",
        "MAX_RETRY_AFTER_S",
        "RemoteReader",
        "TOKEN_SAFETY",
        "resolve_endpoint",
    ],
    "xl3m_stream.running": ["DEFAULT_WINDOW", "RunningScores"],
    "xl3m_stream.scoring": [
        "Batch",
        "Certainty",
        "PreparedQuestion",
        "SEPARATOR",
        "Scorer",
        "bos_prefix",
        "build_batch",
        "certainty",
        "relevance",
    ],
    "xl3m_stream.segment": ["Segment", "merge_meta"],
    "xl3m_stream.segmenter": [
        "Cutter",
        "MetaIndex",
        "MetaIndexState",
        "Segmenter",
        "SegmenterState",
        "newline_token_ids",
    ],
    "xl3m_stream.sources": [
        "DecodeStats",
        "SourceIsADirectoryError",
        "SourceNotFoundError",
        "TextChunk",
        "Utf8Decoder",
        "chat_turns",
        "follow",
        "iterate",
        "jsonl_records",
        "nesting_depth",
        "parse_log_line",
        "read_bytes_chunks",
        "read_lines",
        "read_text",
    ],
    "xl3m_stream.store": ["Offer", "SegmentStore", "StoreEntry", "StoreSnapshot"],
    "xl3m_stream.sync": ["SyncEngine", "SyncEventStream", "T"],
    "xl3m_stream.testing": ["TINY_WINDOW", "build_tiny_model", "build_tiny_tokenizer"],
    "xl3m_stream.tokenizer": [
        "CONTEXT_CHARS",
        "IncrementalTokenizer",
        "MIN_PENDING_CHARS",
        "TokenizerState",
        "backend_tokenizer",
        "data_tokenizer",
    ],
    "xl3m_stream.workers": ["DeviceThreads", "T"],
    "xl3m_stream.evaluate": [
        "Embedder",
        "SELECTORS",
        "Sample",
        "TASKS",
        "contains_evidence",
        "default_depths",
        "evidence_rank",
        "evidence_recall",
        "first_int_match",
        "make_sample",
        "needle_grid",
        "normalise",
        "rank_bm25",
        "rank_embed",
        "reciprocal_rank_fusion",
        "score_answer",
        "select_bm25",
        "select_by_scores",
        "select_embed",
        "select_sink",
        "select_truncate",
        "string_match_all",
        "substring_match",
    ],
    "xl3m_stream.evaluate.baselines": [
        "EMBED_PACKAGE",
        "Embedder",
        "SELECTORS",
        "bm25_tokenize",
        "default_embedder",
        "embed_model_dir",
        "rank_bm25",
        "rank_embed",
        "reciprocal_rank_fusion",
        "select_bm25",
        "select_by_scores",
        "select_embed",
        "select_sink",
        "select_truncate",
    ],
    "xl3m_stream.evaluate.haystack": [
        "ARCHIVE_NOUNS",
        "INCIDENTS",
        "Incident",
        "IncidentLog",
        "InjectedIncident",
        "KEY_WORDS_A",
        "KEY_WORDS_B",
        "LOG_EPOCH",
        "SERVICES",
        "file_units",
        "format_log_line",
        "incident_log",
        "incident_message",
        "log_units",
        "parse_log_time",
        "plural",
        "prose_units",
        "random_code",
        "random_key",
        "random_var",
    ],
    "xl3m_stream.evaluate.metrics": [
        "contains_evidence",
        "evidence_rank",
        "evidence_recall",
        "first_int_match",
        "normalise",
        "score_answer",
        "string_match_all",
        "substring_match",
    ],
    "xl3m_stream.evaluate.realtext": [
        "LOG_CORPUS",
        "PROSE_CORPUS",
        "UNIT_CHARS",
        "check_templates",
        "content_words",
        "corpus_identity",
        "default_corpus",
        "fill_log_lines",
        "log_units",
        "prose_units",
        "random_fields",
        "read_corpus_file",
        "timestamp_of",
    ],
    "xl3m_stream.evaluate.report": [
        "heatmaps",
        "losses",
        "markdown_table",
        "merge_reports",
        "overview",
        "write_report",
    ],
    "xl3m_stream.evaluate.runner": [
        "EvalConfig",
        "METHODS",
        "Report",
        "ResultRow",
        "SampleResult",
        "SampleSignals",
        "aggregate",
        "cpu_description",
        "cut_ids",
        "cut_segments",
        "machine_description",
        "run_eval",
        "stream_ids",
    ],
    "xl3m_stream.evaluate.tasks": [
        "GENERATED_TASKS",
        "PASSKEY_FILLER",
        "PASSKEY_HEADER",
        "PASSKEY_QUESTION",
        "REAL_TASKS",
        "Sample",
        "TASKS",
        "default_depths",
        "make_sample",
        "needle_grid",
    ],
}
EXPECTED_ENTRY_POINTS: dict[str, str] = {
    "xl3m-stream": "xl3m_stream.cli:main def (argv: 'Sequence[str] | None' = None) -> 'int'"
}
EXPECTED_IMPORTED: dict[str, dict[str, str]] = {
    "xl3m_stream": {
        "Alert": "struct (time, question, question_index, seq, start, end, score, threshold, text, "
        "meta, explanation, measure, scores, overlap)",
        "Engine": "class (self, config: 'EngineConfig | None' = None, *, model: 'Any' = None, "
        "tokenizer: 'Any' = None, **overrides: 'Any') -> 'None'",
        "EngineConfig": "struct (model, reader_model, devices, dtype, device_concurrency, "
        "trust_remote_code, allow_download, compile, backend, ray_address, workers, "
        "segment_tokens, segment_overlap, segment_cut, question, question_tokens, "
        "max_question_tokens, measure, relevance, embedder, tgain_top, batch_size, "
        "batch_wait_ms, max_pending_segments, store_segments, store_tokens, "
        "context_tokens, local_window_tokens, rescore, max_new_tokens, temperature, "
        "stop, reader_prompt, answer_style, reader_window, reader_base_url, "
        "reader_api_key, reader_timeout_s, reader_attempts, reader_concurrency, "
        "events_buffer, seed, state_dir, fsync, fsync_interval_s, snapshot_every_s, "
        "snapshot_every_segments)",
        "SegmentScored": "struct (time, seq, start, end, score, scores, question_id)",
        "SyncEngine": "class (self, config: 'EngineConfig | None' = None, *, model: 'Any' = None, "
        "tokenizer: 'Any' = None, backend: 'str' = 'asyncio', **overrides: 'Any') -> "
        "'None'",
    },
    "xl3m_stream._engine.intake": {
        "Intake": "class (self, config: 'EngineConfig', tokenizer: 'Any', decode_stats: 'DecodeStats') -> 'None'"
    },
    "xl3m_stream.embedding": {
        "Embedder": "class (self, model_dir: 'str | Path | None' = None, *, device: 'str' "
        "= 'cpu', dtype: 'Any' = 'auto', batch_size: 'int' = 32, max_tokens: "
        "'int' = 256) -> 'None'",
        "embedder_dir": "def (name: 'str') -> 'Path'",
    },
    "xl3m_stream.evaluate.baselines": {
        "default_embedder": "def () -> 'Embedder'",
        "rank_bm25": "def (chunks: 'Sequence[str]', question: 'str') -> 'list[float]'",
        "select_by_scores": "def (scores: 'Sequence[float]', chunk_tokens: "
        "'Sequence[int]', budget: 'int') -> 'list[int]'",
    },
    "xl3m_stream.evaluate.haystack": {
        "incident_log": "def (rng: 'random.Random', n_lines: 'int', *, watched: "
        "'int' = 6, repeats: 'int' = 2, distractors: 'int' = 3, "
        "burst: 'tuple[int, int]' = (1, 3), spacing: 'int' = 6, "
        "start: 'float' = 0.1, min_gap: 'int' = 40) -> "
        "'IncidentLog'",
        "prose_units": "def (rng: 'random.Random') -> 'Iterator[str]'",
    },
    "xl3m_stream.evaluate.metrics": {
        "contains_evidence": "def (sample: 'Sample', text: 'str', which: 'int' = 0) -> 'bool'",
        "evidence_rank": "def (sample: 'Sample', ranked_texts: 'Sequence[str]', which: 'int' = 0) -> 'int | None'",
        "first_int_match": "def (answer: 'str', expected: 'str') -> 'bool'",
        "score_answer": "def (sample: 'Sample', answer: 'str', *, strict: 'bool' = False) -> 'float'",
    },
    "xl3m_stream.evaluate.report": {
        "markdown_table": "def (rows: 'Sequence[ResultRow]', window: 'int | None' = None) -> 'str'",
        "merge_reports": "def (reports: 'Sequence[Report]') -> 'Report'",
        "write_report": "def (report: 'Report', directory: 'str | Path') -> 'list[Path]'",
    },
    "xl3m_stream.evaluate.runner": {
        "EvalConfig": "struct (tasks, lengths, samples, first_sample, methods, seed, depths, "
        "haystack_files, corpus, scoring_question_tokens, read, "
        "keep_signals, engine)",
        "Report": "struct (model, window, machine, config, results, samples, seconds, reader, reader_window, corpora)",
        "SampleResult": "struct (task, length, tokens, method, seed, depth, "
        "accuracy, selection_recall, evidence_rank, answer, "
        "context_tokens, seconds, signal_ranks, signals)",
        "aggregate": "def (samples: 'Sequence[SampleResult]') -> 'list[ResultRow]'",
        "cpu_description": "def () -> 'str'",
        "cut_segments": "def (tokenizer: 'Any', text: 'str', config: 'EngineConfig') -> 'list[Segment]'",
        "machine_description": "def () -> 'str'",
        "run_eval": "async def (cfg: 'EvalConfig', *, progress: 'ProgressFn | None' = None) -> 'Report'",
    },
    "xl3m_stream.evaluate.tasks": {
        "PASSKEY_QUESTION": "value str",
        "TASKS": "value tuple",
        "make_sample": "def (task: 'str', *, length: 'int', seed: 'int', depth: "
        "'float | None' = None, count_tokens: 'Callable[[str], int]', "
        "haystack_files: 'Sequence[str]' = ()) -> 'Sample'",
    },
    "xl3m_stream.events": {
        "Alert": "struct (time, question, question_index, seq, start, end, score, threshold, "
        "text, meta, explanation, measure, scores, overlap)"
    },
    "xl3m_stream.inference": {
        "Reader": "class (self, model: 'Any', tokenizer: 'Any', *, window: 'int', "
        "prompt_style: 'str' = 'auto', answer_style: 'str' = 'short') -> 'None'",
        "assemble": "def (entries: 'Sequence[StoreEntry]', local_tokens: 'Sequence[int]', "
        "local_start: 'int', *, tokenizer: 'Any', question: 'str', budget: "
        "'int', stream_tokens: 'int', count: 'Callable[[str], int]') -> "
        "'KeyContext'",
    },
    "xl3m_stream.memory": {
        "AgentMemory": "class (self, config: 'EngineConfig | None' = None, **overrides: 'Any') -> 'None'",
        "SyncAgentMemory": "class (self, config: 'EngineConfig | None' = None, *, backend: "
        "'str' = 'asyncio', **overrides: 'Any') -> 'None'",
    },
    "xl3m_stream.metrics": {
        "export_prometheus": "def (engine: 'Any', registry: 'Any' = None, *, namespace: "
        "'str' = 'xl3m_stream') -> 'PrometheusCollector'"
    },
    "xl3m_stream.models": {
        "load": "def (spec: 'str', device: 'Any', *, dtype: 'str' = 'auto', "
        "trust_remote_code: 'bool' = False, allow_download: 'bool' = False) -> "
        "'LoadedModel'",
        "load_tokenizer": "def (source: 'ModelSource', *, trust_remote_code: 'bool' = False, "
        "allow_download: 'bool' = False) -> 'Any'",
        "pick_dtype": "def (device: 'Any', requested: 'str') -> 'Any'",
        "resolve": "def (spec: 'str') -> 'ModelSource'",
    },
    "xl3m_stream.monitor": {
        "AUTO": "value str",
        "DEFAULT_COOLDOWN": "value int",
        "DEFAULT_MIN_OVERLAP": "value float",
        "DEFAULT_THRESHOLD": "value str",
        "DEFAULT_WATCH_MEASURE": "value str",
        "Monitor": "class (self, embedder: 'str' = 'minilm') -> 'None'",
    },
    "xl3m_stream.persistence": {
        "read_snapshot": "def (path: 'str | os.PathLike[str]') -> 'EngineSnapshot | None'",
        "read_stream": "def (path: 'str | os.PathLike[str]') -> 'StreamContents'",
    },
    "xl3m_stream.relevance": {
        "LexicalIndex": "class (self, *, rows: 'int' = 2, buckets: 'int' = 524288, k1: "
        "'float' = 1.5, b: 'float' = 0.75) -> 'None'",
        "fuse_at_ask": "def (lists: 'Sequence[Sequence[float]]') -> 'list[float]'",
        "interleaved_rank_fusion": "def (rankings: 'Sequence[Sequence[float]]', k: 'int' = 60) -> 'list[float]'",
        "passage_similarity": "def (question: 'np.ndarray', segments: 'Sequence[np.ndarray]') -> 'list[float]'",
        "reciprocal_rank_fusion": "def (rankings: 'Sequence[Sequence[float]]', k: 'int' = 60) -> 'list[float]'",
        "term_counts": "def (text: 'str') -> 'Counter[str]'",
    },
    "xl3m_stream.scoring": {
        "Scorer": "class (self, model: 'Any', tokenizer: 'Any', *, tgain_top: 'int' = 3, "
        "pad_to_segment: 'int | None' = None, pad_rows: 'int | None' = None, "
        "compiled: 'Any' = None) -> 'None'",
        "build_batch": "def (segments: 'Sequence[Sequence[int]]', question: "
        "'Sequence[int]', *, prefix: 'Sequence[int]' = (), sep: "
        "'Sequence[int]' = (), pad_id: 'int' = 0, pad_to: 'int | None' = "
        "None) -> 'Batch'",
        "certainty": "def (logits: 'torch.Tensor', targets: 'torch.Tensor') -> 'Certainty'",
    },
    "xl3m_stream.segmenter": {
        "Segmenter": "class (self, length: 'int', *, overlap: 'int' = 0, boundary_ids: "
        "'frozenset[int] | None' = None, min_fill: 'float' = 0.5, start_seq: "
        "'int' = 0, start_pos: 'int' = 0) -> 'None'"
    },
    "xl3m_stream.sources": {
        "DecodeStats": "struct (bytes_read, replaced, nul_removed, lines, split_lines, skipped_records, truncations)",
        "TextChunk": "struct (text, meta)",
        "parse_log_line": "def (line: 'str') -> 'dict[str, Any]'",
        "read_lines": "async gen (path: 'PathArg', *, stats: 'DecodeStats | None' = None, "
        "max_line_chars: 'int' = 1048576, chunk_size: 'int' = 65536) -> "
        "'AsyncIterator[TextChunk]'",
    },
    "xl3m_stream.store": {
        "SegmentStore": "class (self, max_segments: 'int', max_tokens: 'int | None' = None) -> 'None'",
        "StoreEntry": "struct (segment, score, question_id, scores)",
    },
    "xl3m_stream.testing": {
        "build_tiny_model": "def (path: 'str | Path', *, hidden_size: 'int' = 64, layers: "
        "'int' = 2, heads: 'int' = 4, kv_heads: 'int' = 2, window: "
        "'int' = 1024, seed: 'int' = 0, vocab_size: 'int' = 512) -> "
        "'Path'"
    },
    "xl3m_stream.tokenizer": {
        "IncrementalTokenizer": "class (self, tokenizer: 'object', *, max_pending_chars: 'int' = 65536) -> 'None'"
    },
    "xl3m_stream.workers": {"DeviceThreads": "class (self, name: 'str', size: 'int' = 1) -> 'None'"},
}


# --------------------------------------------------------------------------- the tests
def test_all_is_pinned() -> None:
    assert sorted(xl3m_stream.__all__) == EXPECTED_ALL
    assert len(set(xl3m_stream.__all__)) == len(xl3m_stream.__all__)


@pytest.mark.parametrize("name", [n for n in EXPECTED_ALL if n != "__version__"])
def test_exported_object_is_pinned(name: str) -> None:
    """Each exported class: bases, methods with signatures, properties, struct fields; each function's signature."""
    assert describe(getattr(xl3m_stream, name)) == EXPECTED_EXPORTS[name]


@pytest.mark.parametrize("name", PUBLIC_CLASSES)
def test_instance_attributes_are_pinned(name: str) -> None:
    assert instance_attributes(name) == EXPECTED_INSTANCE_ATTRS[name]


def test_engine_config_fields_are_pinned() -> None:
    from xl3m_stream import EngineConfig

    assert struct_fields(EngineConfig) == EXPECTED_CONFIG_FIELDS
    assert list(struct_fields(EngineConfig)) == list(EXPECTED_CONFIG_FIELDS)  # the order too (positional reprs)


def test_event_types_are_pinned() -> None:
    from xl3m_stream import Event

    assert sorted(c.__name__ for c in _subclasses(Event)) == EXPECTED_EVENTS


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_module_offers_its_names(module: str) -> None:
    assert module_names(module) == EXPECTED_MODULES[module]


def test_entry_points_are_pinned() -> None:
    assert entry_points() == EXPECTED_ENTRY_POINTS


@pytest.mark.parametrize("module", list(EXPECTED_IMPORTED))
def test_names_user_code_imports_are_pinned(module: str) -> None:
    """What examples/, benchmarks/, scripts/ and the Markdown code blocks import: still there, same shape."""
    mod = importlib.import_module(module)
    got = {n: describe_shallow(getattr(mod, n)) if hasattr(mod, n) else "MISSING" for n in EXPECTED_IMPORTED[module]}
    assert got == EXPECTED_IMPORTED[module]


def test_pins_cover_what_user_code_imports() -> None:
    """A new import in an example or a benchmark is pinned too (regenerate the tables)."""
    unpinned = {
        m: [n for n in names if n not in EXPECTED_IMPORTED.get(m, {})]
        for m, names in imported_names().items()
        if m not in EXPECTED_IMPORTED or set(names) - set(EXPECTED_IMPORTED[m])
    }
    assert not unpinned


# --------------------------------------------------------------------------- SyncEngine = Engine
ASYNC_ONLY = {"__aenter__": "__enter__", "__aexit__": "__exit__", "aclose": "close"}
"""Engine's async-only calls and SyncEngine's counterparts (``start`` is SyncEngine's own)."""

SYNC_RETURNS = {"AsyncIterator[str]": "Iterator[str]", "EventStream": "SyncEventStream", "Engine": "SyncEngine"}
"""Return annotations that differ by nature: an async iterator becomes a blocking one."""


def _sync_form(sig: inspect.Signature) -> tuple[list[str], str]:
    ret = sig.return_annotation
    return [str(p) for p in sig.parameters.values()], SYNC_RETURNS.get(ret, ret)


def test_sync_engine_offers_every_engine_call() -> None:
    """Every public call, property and attribute of Engine, on SyncEngine with the same signature
    (the async-only lifecycle calls map to ASYNC_ONLY; ``__init__`` adds ``backend``)."""
    from xl3m_stream import Engine, SyncEngine

    engine = {**own_members(Engine), **dict.fromkeys(instance_attributes("Engine"), "property")}
    sync = own_members(SyncEngine)
    missing = sorted(ASYNC_ONLY.get(n, n) for n in engine if ASYNC_ONLY.get(n, n) not in sync)
    assert not missing
    for name, kind in engine.items():
        twin = ASYNC_ONLY.get(name, name)
        if kind == "property" or sync[twin] == "property":
            assert sync[twin] == kind == "property", name
            continue
        ours = inspect.signature(getattr(SyncEngine, twin))
        if name == "__init__":
            ours = ours.replace(parameters=[p for p in ours.parameters.values() if p.name != "backend"])
        assert _sync_form(ours) == _sync_form(inspect.signature(getattr(Engine, name))), name
        assert not inspect.iscoroutinefunction(getattr(SyncEngine, twin)), name


def test_sync_engine_new_calls_on_the_tiny_model(tiny_model_dir, tmp_path) -> None:
    """The keyword arguments SyncEngine now spells out reach the engine; an async source is read."""
    from helpers import tiny_config

    from xl3m_stream import Alert, InputError, SyncEngine

    text = "".join(f"line {i}: The grass is green. The sky is blue.\n" for i in range(30))
    q = "What is the pass key?"

    async def lines():
        for line in text.splitlines(keepends=True)[:10]:
            yield line

    with SyncEngine(tiny_config(tiny_model_dir, state_dir=str(tmp_path / "state"))) as engine:
        watch = engine.watch("Which service failed?", threshold=-1e9, measure="nll", warmup=0, min_overlap=None)
        with engine.events() as events:
            taken = engine.process(lines())  # an async iterable, read on the engine's loop
            assert taken > 0 and engine.stream_tokens == taken
            engine.explained()
            got = []
            while (event := events.get(timeout=0.5)) is not None:
                got.append(event)
        assert any(isinstance(e, Alert) for e in got)  # the threshold reached the watch
        engine.unwatch(watch)
        engine.process(text.splitlines(keepends=True)[10:])  # a plain iterable, read in this thread
        assert engine.decode_stats.replaced == 0 and engine.chars_taken == len(text)
        assert engine.budget_for(q, whole_window=True) >= engine.budget_for(q, max_new_tokens=1) > 0
        answer = engine.ask(q, max_new_tokens=1, rescore="never")
        assert answer.rescored == 0
        assert "".join(engine.ask_stream(q, max_new_tokens=1, rescore="never")) == answer.text
        assert engine.key_context(q, rescore="never").tokens == answer.context_tokens
        chosen = [e.segment for e in engine.store][:2]
        room = engine.budget_for(q, max_new_tokens=1, whole_window=True)
        mine = engine.answer_with(chosen, q, scores=[2.5, 2.5], budget=room, max_new_tokens=1)
        assert [c.score for c in mine.segments] == [2.5, 2.5]  # the scores reached the engine
        with pytest.raises(InputError, match="budget"):
            engine.answer_with(chosen, q, budget=room + 1, max_new_tokens=1)  # the budget reached the engine
        mark = engine.mark_input("lines.txt", 30, complete=True, digest="abc")
        assert (mark.complete, mark.digest) == (True, "abc") and engine.input_mark == mark
        assert engine.input_resume("lines.txt") == (mark, 30)
    assert engine.decode_stats.replaced == 0  # readable after close


def write_pins() -> None:
    """Rewrite the EXPECTED_* tables of this file from the code as it is (then run ruff format)."""
    import re

    cur = current()
    path = Path(__file__)
    text = path.read_text(encoding="utf-8")
    for var, key in PINS.items():
        head = re.search(rf"^{var}: [^=]*= ", text, re.M)
        assert head is not None, var
        end = re.compile(r"^(?:EXPECTED_|# -----)", re.M).search(text, head.end())
        assert end is not None, var
        literal = pprint.pformat(cur[key], width=110, sort_dicts=False)
        text = text[: head.end()] + literal + "\n" + text[end.start() :]
    path.write_text(text, encoding="utf-8")


PINS = {
    "EXPECTED_ALL": "all",
    "EXPECTED_EXPORTS": "exports",
    "EXPECTED_INSTANCE_ATTRS": "instance_attrs",
    "EXPECTED_CONFIG_FIELDS": "config_fields",
    "EXPECTED_EVENTS": "events",
    "EXPECTED_MODULES": "modules",
    "EXPECTED_ENTRY_POINTS": "entry_points",
    "EXPECTED_IMPORTED": "imported",
}
"""Which table of :func:`current` each literal pins."""


if __name__ == "__main__":  # python tests/test_public_surface.py [--write]
    sys.path.insert(0, str(ROOT))
    if "--write" in sys.argv:
        write_pins()
    else:
        pprint.pprint(current(), width=140, sort_dicts=False)
