"""The commands of the command line (``xl3m_stream.cli`` holds ``main`` and the parser).

One module per command (``ask``, ``ingest``, ``watch``, ``serve``, ``demo``, ``eval``), beside what they
share: ``settings`` (the engine configuration from the options and a state directory),
``intake`` (feeding a file or stdin, resumed in a state directory) and ``output`` (messages
and progress on stderr). Private: the command line itself is the interface.
"""

EXIT_ERROR = 1
EXIT_USAGE = 2
