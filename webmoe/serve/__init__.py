"""`webmoe serve`: the chat app, the kernels and packages over HTTP, and the OpenAI-compatible API on the
native engine."""
