"""engine.data.prompts: template filling, chat templates, tokenization and the prompt-length budget, with a
word-level tokenizer built here (no downloads)."""

from __future__ import annotations

import logging

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from engine.errors import DataError
from engine.data.prompts import DEFAULT_INSTRUCTION, format_prompt, prepare_tasks
from engine.types import Task

WORDS = ["<unk>", "<s>", "</s>", "<|user|>", "<|system|>", "<|assistant|>",
         "What", "is", "2", "+", "?", "Q:", "Be", "brief."]
ID = {w: i for i, w in enumerate(WORDS)}
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_tokenizer(chat: bool = False) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer that prepends <s> by default, optionally with a chat template."""
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", ID["<s>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  additional_special_tokens=["<|user|>", "<|system|>", "<|assistant|>"])
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def make_tasks(*questions: str) -> list[Task]:
    return [Task(id=f"t{i}", question=q, label=str(i)) for i, q in enumerate(questions)]


def ids(*words: str) -> tuple[int, ...]:
    return tuple(ID.get(w, ID["<unk>"]) for w in words)


# --- format_prompt ---------------------------------------------------------------------------------


def test_default_template_is_ttrl_instruction_plain_text():
    text = format_prompt("What is 2 + 2 ?", make_tokenizer())
    assert text == "What is 2 + 2 ?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert text.endswith(DEFAULT_INSTRUCTION)


def test_template_keeps_literal_braces():
    text = format_prompt("x", make_tokenizer(), template="Q: {question} -> \\boxed{} {not_a_field}")
    assert text == "Q: x -> \\boxed{} {not_a_field}"


def test_template_without_question_fails():
    with pytest.raises(ValueError, match=r"Answer: \{q\}.*\{question\}"):
        format_prompt("x", make_tokenizer(), template="Answer: {q}")


def test_chat_template_applied_when_tokenizer_has_one():
    text = format_prompt("What is 2 ?", make_tokenizer(chat=True), template="{question}")
    assert text == "<s><|user|> What is 2 ? <|assistant|>"


def test_chat_with_system_prompt():
    text = format_prompt("What is 2 ?", make_tokenizer(chat=True), template="{question}",
                         system_prompt="Be brief.")
    assert text == "<s><|system|> Be brief. <|user|> What is 2 ? <|assistant|>"


def test_chat_false_gives_plain_text_and_system_prompt_prepended():
    tok = make_tokenizer(chat=True)
    assert format_prompt("What is 2 ?", tok, template="{question}", chat=False) == "What is 2 ?"
    text = format_prompt("What", tok, template="{question}", chat=False, system_prompt="Be brief.")
    assert text == "Be brief.\n\nWhat"


def test_chat_true_without_template_fails():
    with pytest.raises(ValueError, match="no chat_template"):
        format_prompt("x", make_tokenizer(), chat=True)


# --- prepare_tasks ---------------------------------------------------------------------------------


def test_prepare_plain_text_adds_bos_once():
    [task] = prepare_tasks(make_tasks("What is 2 + 2 ?"), make_tokenizer(), template="Q: {question}")
    assert task.prompt == "Q: What is 2 + 2 ?"
    assert task.prompt_ids == ids("<s>", "Q:", "What", "is", "2", "+", "2", "?")
    assert (task.id, task.question, task.label) == ("t0", "What is 2 + 2 ?", "0")  # the rest is kept


def test_prepare_chat_does_not_double_bos():
    [task] = prepare_tasks(make_tasks("What is 2 ?"), make_tokenizer(chat=True), template="{question}")
    assert task.prompt == "<s><|user|> What is 2 ? <|assistant|>"
    assert task.prompt_ids == ids("<s>", "<|user|>", "What", "is", "2", "?", "<|assistant|>")
    assert all(type(i) is int for i in task.prompt_ids)


def test_prepare_empty_list():
    assert prepare_tasks([], make_tokenizer()) == []


def test_too_long_error_names_task_and_lengths():
    tasks = make_tasks("2", "What is 2 + 2 ?", "What is 2 ?")  # 2, 7 and 5 tokens with <s>
    with pytest.raises(DataError) as info:
        prepare_tasks(tasks, make_tokenizer(), template="{question}", max_prompt_tokens=4, on_too_long="error")
    msg = str(info.value)
    assert "'t1'" in msg and "7 tokens" in msg and "max_prompt_tokens=4" in msg and "2 of 3" in msg


def test_too_long_skip_drops_and_warns(caplog):
    tasks = make_tasks("2", "What is 2 + 2 ?", "What is 2 ?")
    with caplog.at_level(logging.WARNING, logger="engine.data.prompts"):
        kept = prepare_tasks(tasks, make_tokenizer(), template="{question}", max_prompt_tokens=5,
                             on_too_long="skip")
    assert [t.id for t in kept] == ["t0", "t2"]  # a prompt of exactly the limit is kept
    assert "1 of 3" in caplog.text and "t1" in caplog.text


def test_too_long_skip_everything_is_an_error():
    with pytest.raises(DataError, match="no prompt fits"):
        prepare_tasks(make_tasks("What is 2 ?"), make_tokenizer(), template="{question}",
                      max_prompt_tokens=1, on_too_long="skip")


def test_bad_on_too_long_value():
    with pytest.raises(ValueError, match="error, skip"):
        prepare_tasks(make_tasks("2"), make_tokenizer(), on_too_long="truncate")
