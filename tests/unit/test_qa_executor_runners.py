"""Each modality runner drives a real subprocess (a stand-in `apr`) and classifies what came back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from apr.qa.axes import Backend, Modality
from apr.qa.infra import InfraCause
from apr.qa.invocation import Invocation
from apr.qa.procs import Ending
from apr.qa.runners import chat_turn, run_cell

STAND_IN = [sys.executable, str(Path(__file__).with_name("qa_exec_stand_in_apr.py"))]


def cell(
    modality: str, prompt: str, *, timeout_s: float = 30.0, model: str = "model.gguf", chat: bool = True
) -> Invocation:
    return Invocation(
        model_path=Path(model),
        format="gguf",
        backend=Backend.CPU,
        modality=Modality(modality),
        scenario_id="s1",
        prompt=prompt,
        seed=7,
        max_tokens=8,
        timeout_s=timeout_s,
        use_chat_template=chat,
    )


@pytest.mark.parametrize("modality", ["run", "chat", "serve"])
def test_a_good_reply_is_ok_with_its_text(modality):
    result = run_cell(cell(modality, "What is 2+2?"), STAND_IN)
    assert result.ending is Ending.OK, result.reason
    assert "4" in result.text


def test_serve_uses_the_completions_api_for_a_model_without_chat_template():
    result = run_cell(cell("serve", "2+2=", chat=False), STAND_IN)
    assert result.ending is Ending.OK, result.reason
    assert result.text.endswith("4.")


@pytest.mark.parametrize("modality", ["run", "chat", "serve"])
def test_a_hung_cell_times_out(modality):
    result = run_cell(cell(modality, "HANG", timeout_s=3.0), STAND_IN)
    assert result.ending is Ending.TIMEOUT, result.reason


@pytest.mark.parametrize("modality", ["run", "chat"])
def test_a_segfault_is_a_crash(modality):
    result = run_cell(cell(modality, "SEGV"), STAND_IN)
    assert result.ending is Ending.CRASHED
    assert "SIGSEGV" in result.reason


@pytest.mark.parametrize("modality", ["run", "chat"])
def test_a_traceback_is_a_crash_with_the_exception_in_the_reason(modality):
    result = run_cell(cell(modality, "RAISE"), STAND_IN)
    assert result.ending is Ending.CRASHED
    assert "planted failure" in result.reason


def test_a_server_that_aborts_mid_request_is_a_crash():
    result = run_cell(cell("serve", "CRASH_SERVER"), STAND_IN)
    assert result.ending is Ending.CRASHED and result.infra_cause is None, result.reason


def test_a_server_killed_from_outside_mid_request_is_the_machine_not_the_model():
    result = run_cell(cell("serve", "KILLED_SERVER"), STAND_IN)
    assert result.ending is Ending.INFRASTRUCTURE and result.infra_cause is InfraCause.LOST_PROCESS, result.reason
    assert "SIGKILL" in result.reason


def test_a_server_that_never_gets_ready_times_out():
    result = run_cell(cell("serve", "hi", timeout_s=3.0, model="SERVE_NEVER_READY"), STAND_IN)
    assert result.ending is Ending.TIMEOUT


def test_a_clean_refusal_is_not_a_crash():
    result = run_cell(cell("run", "REFUSE"), STAND_IN)
    assert result.ending is Ending.REFUSED
    assert "refuses" in result.reason


def test_an_empty_reply_is_ok_but_empty_for_the_oracles_to_judge():
    result = run_cell(cell("run", "EMPTY"), STAND_IN)
    assert result.ending is Ending.OK
    assert result.text == ""


def test_a_program_printing_no_json_is_refused():
    not_apr = [sys.executable, "-c", "print('hello, not json')"]
    result = run_cell(cell("run", "hi"), not_apr)
    assert result.ending is Ending.REFUSED
    assert "no JSON" in result.reason


@pytest.mark.parametrize("modality", ["run", "chat", "serve"])
def test_a_multi_line_prompt_reaches_the_model_exactly(modality):
    prompt = 'ECHO\ndef f():\n    """Say "hi"."""\n    return \'你好\'\n'
    result = run_cell(cell(modality, prompt), STAND_IN)
    assert result.ending is Ending.OK, result.reason
    assert result.text == prompt


def test_a_chat_turn_is_one_line():
    assert "\n" not in chat_turn("a\nb\n\nc")
