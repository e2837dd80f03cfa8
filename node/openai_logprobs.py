"""Token log-probabilities through the OpenAI API: what a request asks for, as the params the
llama backend reads, and the ``logprobs`` of an answer in OpenAI's two shapes (a chat's
``content`` list, a completion's four parallel lists).

Only llama models give them, and only one loaded with ``logits_all = true`` (models.toml):
llama.cpp keeps every token's logits then, n_ctx x vocabulary floats. Another llama model
fails the run with that advice; another backend is refused before anything is queued.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from syncq.client import Outcome
from syncq.records import ParamValue

from .http_common import ApiError

BACKENDS = ("llama",)  # the backends that give token log-probabilities
MOST = {True: 20, False: 5}  # alternatives per token: a chat's top_logprobs, a completion's logprobs


def requested(
    given: Mapping[str, Any],
    params: dict[str, ParamValue],
    model: str,
    backend: str | None,
    *,
    chat_mode: bool,
) -> None:
    """Add ``logprobs``/``top_logprobs`` to ``params`` if the body asks: a chat's
    ``logprobs: true`` with ``top_logprobs``, a completion's ``logprobs`` (0 counts: the chosen
    tokens alone). Raises ``ApiError``."""
    asked, top = given.get("logprobs"), given.get("top_logprobs")
    if chat_mode:
        if asked is not None and not isinstance(asked, bool):
            raise ApiError(400, "logprobs must be true or false", param="logprobs")
        if top is not None and not asked:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if not asked:
            return
        alternatives, name = 0 if top is None else top, "top_logprobs"
    else:
        if asked is None:
            return
        alternatives, name = asked, "logprobs"
    most = MOST[chat_mode]
    if isinstance(alternatives, bool) or not isinstance(alternatives, int) or not 0 <= alternatives <= most:
        raise ApiError(400, f"{name} must be a whole number from 0 to {most}", param=name)
    if backend not in BACKENDS:
        raise ApiError(
            400,
            f"the model '{model}' ({backend}) cannot give logprobs",
            code="model_unable",
            param="logprobs",
        )
    params |= {"logprobs": True, "top_logprobs": alternatives}


def shaped(outcome: Outcome, chat_mode: bool) -> dict[str, Any] | None:
    """A choice's ``logprobs`` (None when the run gave none)."""
    if not outcome.logprobs:
        return None
    if chat_mode:
        content = [
            _token(t.token, t.logprob) | {"top_logprobs": [_token(*pair) for pair in t.top]}
            for t in outcome.logprobs
        ]
        return {"content": content, "refusal": None}
    tokens = [t.token for t in outcome.logprobs]
    return {
        "tokens": tokens,
        "token_logprobs": [t.logprob for t in outcome.logprobs],
        "top_logprobs": [dict(t.top) for t in outcome.logprobs],
        "text_offset": list(itertools.accumulate(map(len, tokens[:-1]), initial=0)),
    }


def _token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}
