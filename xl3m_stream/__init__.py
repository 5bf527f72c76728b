"""xl3m_stream: reason over unbounded token streams with a short-window language model."""
