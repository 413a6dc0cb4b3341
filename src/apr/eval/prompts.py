"""What the model is asked and what program its reply becomes: EvalPlus's prompts, the model's own chat template.

The Qwen2.5-Coder report measures its instruct models on HumanEval and MBPP with EvalPlus; these are
EvalPlus's prompts (``evalplus.codegen``, 0.3.1). A model with a chat template gets the instruction as a user
turn, and its reply is begun for it with the response prefix and an open ```python fence, so the reply is
code up to the closing fence. A model without a chat template (a base model) continues the problem's text
itself, stopped where EvalPlus stops direct completions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from apr.eval.tasks import Problem

INSTRUCTION_PREFIX = (
    "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
)
RESPONSE_PREFIX = (
    "Below is a Python script with a self-contained function that solves the problem and passes corresponding tests:"
)
# Where EvalPlus ends every sample: a script's driver code is not part of the solution.
COMMON_STOPS = ("\nif __name__", "\ndef main(", "\nprint(")
DIRECT_STOPS = {
    "humaneval": ("\ndef ", "\nclass ", "\nimport ", "\nfrom ", "\nassert "),
    "mbpp": ('\n"""', "\nassert"),
}
CHAT_STOPS = ("\n```",)


class ChatTokenizer(Protocol):
    @property
    def has_chat_template(self) -> bool: ...

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str: ...


@dataclass(frozen=True)
class Request:
    """The text the model is given for one problem, and where its reply ends."""

    text: str
    stops: tuple[str, ...]
    chat: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def build_request(problem: Problem, family: str, tokenizer: ChatTokenizer, *, chat: bool | None = None) -> Request:
    """The request for ``problem``: through the chat template when the model has one (``chat`` overrides)."""
    use_chat = tokenizer.has_chat_template if chat is None else chat
    if not use_chat:
        return Request(problem.prompt, COMMON_STOPS + DIRECT_STOPS[family], chat=False)
    instruction = f"{INSTRUCTION_PREFIX}\n```\n{problem.prompt.strip()}\n```\n"
    opened = tokenizer.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True)
    return Request(f"{opened}{RESPONSE_PREFIX}\n```python\n", COMMON_STOPS + CHAT_STOPS, chat=True)


def program_of(problem: Problem, completion: str, request: Request) -> str:
    """The program a reply stands for. A direct completion continues the problem's text; a chat reply is a
    script of its own, appended to the problem's prefix so helpers the prompt defines stay defined (the
    reply's definitions, coming later, win)."""
    code = _strip_fence(completion)
    if not request.chat:
        return f"{problem.prompt}{code}\n"
    return f"{problem.program_prefix}\n{code}\n" if problem.program_prefix else f"{code}\n"


def _strip_fence(text: str) -> str:
    """A reply that ran to EOS may end with the fence the stop string would have caught."""
    stripped = text.rstrip()
    return stripped.removesuffix("```").rstrip() if stripped.endswith("```") else text
