"""Helpers for the tests that drive `webmoe serve` with the official openai client."""


def answer_text(client, stream: bool, **kw) -> str:
    """A chat completion's text, asked for whole or streamed (the deltas joined)."""
    if not stream:
        return client.chat.completions.create(**kw).choices[0].message.content
    return "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(stream=True, **kw)
                   if ch.choices)
