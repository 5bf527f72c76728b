"""The parts of :mod:`xl3m_stream.sources` (the public module, which re-exports them): ``decode``
(records, UTF-8 decoding, line splitting), ``files`` (files, stdin, tail -F), ``iterables``
(chat turns, generic sources) and ``logs`` (JSON-lines records, plain-text log lines)."""
