"""Turn a task's raw question into the text and token ids the model sees.

Benchmark files hold only the question; the instruction to put the final answer in ``\\boxed{}`` comes
from the template here (TTRL, arXiv 2504.16084, uses exactly :data:`DEFAULT_INSTRUCTION`), so every
task of a run is asked the same way and the reward's answer extraction knows where to look. Instruct
models get their chat template applied; base models get the plain filled template.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from engine.errors import DataError
from engine.types import Task

log = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_TEMPLATE = "{question}\n" + DEFAULT_INSTRUCTION
ON_TOO_LONG = ("error", "skip")


def uses_chat(tokenizer, chat: bool | None) -> bool:
    """Whether the chat template applies: ``chat`` if given, else whether the tokenizer has one."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat is None:
        return has_template
    if chat and not has_template:
        raise ValueError(f"chat=True but the tokenizer ({type(tokenizer).__name__}) has no chat_template; "
                         "set one on the tokenizer or pass chat=False for a plain-text prompt")
    return bool(chat)


def fill_template(question: str, template: str = DEFAULT_TEMPLATE) -> str:
    """``template`` with ``{question}`` replaced by ``question``.

    Plain substitution, not ``str.format``: templates hold literal braces (``\\boxed{}``, LaTeX).
    """
    if "{question}" not in template:
        raise ValueError(f"prompt template {template!r} has no {{question}} placeholder; "
                         "expected e.g. '{question}\\n' + DEFAULT_INSTRUCTION")
    return template.replace("{question}", question)


def format_prompt(
    question: str,
    tokenizer,
    *,
    template: str = DEFAULT_TEMPLATE,
    chat: bool | None = None,
    system_prompt: str | None = None,
) -> str:
    """The prompt text for one question: the filled template, wrapped in the chat template if used.

    ``chat=None`` uses the tokenizer's chat template when it has one. Without a chat template a
    ``system_prompt`` is prepended to the text, followed by a blank line.
    """
    return _format(question, tokenizer, template, uses_chat(tokenizer, chat), system_prompt)


def prepare_tasks(
    tasks: list[Task],
    tokenizer,
    *,
    template: str = DEFAULT_TEMPLATE,
    chat: bool | None = None,
    system_prompt: str | None = None,
    max_prompt_tokens: int | None = None,
    on_too_long: str = "skip",
    context_length: int | None = None,
    completion_tokens: int = 0,
) -> list[Task]:
    """New Tasks with ``prompt`` and ``prompt_ids`` filled from ``question`` (other fields kept).

    With a chat template the text already carries the BOS token, so it is tokenized with
    ``add_special_tokens=False`` (a second BOS would shift the model off its training distribution);
    plain text gets the tokenizer's default special tokens.

    A prompt may hold at most ``max_prompt_tokens`` tokens, and at most ``context_length -
    completion_tokens`` (the model's positions minus the completion budget: a longer prompt leaves
    its completion no room, and the model would run past the positions it was trained on). Longer
    prompts are dropped with a logged count (``on_too_long="skip"``, the default) or raise a
    :class:`DataError` (``"error"``); if every prompt is too long that is an error either way.
    """
    if on_too_long not in ON_TOO_LONG:
        raise ValueError(f"on_too_long={on_too_long!r}; expected one of {', '.join(ON_TOO_LONG)}")
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be positive, got {max_prompt_tokens}")
    limit, why = max_prompt_tokens, f"max_prompt_tokens={max_prompt_tokens}"
    if context_length is not None:
        room = context_length - completion_tokens
        if room < 1:
            raise DataError(f"the model's context holds {context_length} tokens and the completion budget is "
                            f"{completion_tokens} (max_completion_length / eval_max_tokens), which leaves no room "
                            "for a prompt; lower max_completion_length")
        if limit is None or room < limit:
            limit, why = room, (f"the model's context ({context_length} positions) minus the completion budget "
                                f"({completion_tokens} tokens) = {room}")
    if not tasks:
        return []
    use_chat = uses_chat(tokenizer, chat)
    prompts = [_format(t.question, tokenizer, template, use_chat, system_prompt) for t in tasks]
    special = {"add_special_tokens": False} if use_chat else {}
    ids = tokenizer(prompts, **special)["input_ids"]
    prepared = [replace(t, prompt=p, prompt_ids=tuple(int(i) for i in row))
                for t, p, row in zip(tasks, prompts, ids, strict=True)]
    if limit is None:
        return prepared
    kept = [t for t in prepared if len(t.prompt_ids) <= limit]
    too_long = [t for t in prepared if len(t.prompt_ids) > limit]
    if not too_long:
        return kept
    first = too_long[0]
    detail = (f"{len(too_long)} of {len(prepared)} prompts are longer than {why} tokens "
              f"(first: task {first.id!r} has {len(first.prompt_ids)} tokens)")
    if on_too_long == "error":
        raise DataError(f"{detail}; shorten them, lower max_completion_length, raise max_prompt_tokens, "
                        "or set on_too_long: skip to leave them out")
    if not kept:
        raise DataError(f"{detail}; no prompt fits, nothing left to run")
    log.warning("%s; left out (on_too_long: skip), ids: %s", detail, ", ".join(t.id for t in too_long[:20])
                + (", ..." if len(too_long) > 20 else ""))
    return kept


def model_context_length(model_path: str | None) -> int | None:
    """How many positions the model at ``model_path`` was built for (``max_position_embeddings`` or its
    older names), read from its config alone; None when the config cannot be read or says nothing."""
    if not model_path:
        return None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path)
    except Exception as err:  # no config.json, an unknown architecture, offline: no check, not a failure
        log.debug("no context length for %s: %s", model_path, err)
        return None
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _format(question: str, tokenizer, template: str, use_chat: bool, system_prompt: str | None) -> str:
    text = fill_template(question, template)
    if not use_chat:
        return f"{system_prompt}\n\n{text}" if system_prompt else text
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
