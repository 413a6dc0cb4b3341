"""The sandbox of `apr eval`: hostile generated programs are stopped, and right and wrong answers score 1 and 0."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psutil
import pytest

from apr.eval.prompts import Request, build_request, program_of
from apr.eval.sandbox import Isolation, Limits, ProcessCap, Sandbox, Status, probe_isolation
from apr.eval.tasks import Problem, Task, load_problems

SANDBOX = Sandbox(Limits(timeout_s=3.0, memory_bytes=512 << 20, processes=16))


def _harness_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(part.endswith("_harness.py") for part in cmdline):
            found.append(process)
    return found


def test_an_infinite_loop_is_killed_at_the_timeout():
    start = time.monotonic()
    result = SANDBOX.run("while True:\n    pass\n", "")
    assert result.status is Status.TIMEOUT and not result.passed
    assert 3.0 <= time.monotonic() - start < 10.0
    assert "timed out" in result.error


def test_a_fork_bomb_hits_the_process_limit_and_leaves_nothing_behind():
    # Children that leave the process group (setsid) and sleep: only the PID namespace (or the group kill
    # where namespaces are refused) can end them.
    program = (
        "import os, time\n"
        "count = 0\n"
        "while True:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as err:\n"
        "        raise SystemExit(f'fork refused after {count} children: {err}')\n"
        "    if pid == 0:\n"
        "        os.setsid()\n"
        "        time.sleep(120)\n"
        "        os._exit(0)\n"
        "    count += 1\n"
    )
    if SANDBOX.process_cap is ProcessCap.NONE:
        pytest.skip("root without a writable pids cgroup: no kernel limit on processes can be set here")
    result = SANDBOX.run(program, "")
    assert result.status is Status.FAILED, result
    assert "fork refused after" in result.error
    refused_after = int(result.error.split("fork refused after ")[1].split()[0])
    assert refused_after < 16  # the limit bound it, not the host
    time.sleep(0.2)
    assert _harness_processes() == [] or probe_isolation() is Isolation.RLIMITS


def test_a_memory_hog_fails_with_memory_error():
    result = SANDBOX.run("hog = bytearray(2 << 30)\n", "")
    assert result.status is Status.FAILED
    assert "MemoryError" in result.error


def test_a_network_call_does_not_reach_a_listener_on_the_host():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n"
    result = SANDBOX.run(program, "")
    server.setblocking(False)
    with pytest.raises(BlockingIOError):  # nobody is waiting to be accepted
        server.accept()
    server.close()
    assert result.status is Status.FAILED
    assert "OSError" in result.error or "unreachable" in result.error.lower()


def test_output_claiming_a_pass_and_an_early_clean_exit_are_not_passes():
    fake = SANDBOX.run("print('passed')\nimport os\nos._exit(0)\n", "")
    assert fake.status is Status.FAILED and "no verdict" in fake.error
    exits = SANDBOX.run("raise SystemExit(0)\n", "assert False\n")
    assert exits.status is Status.FAILED and "SystemExit" in exits.error


def test_a_sandbox_that_fails_before_the_program_runs_is_an_error_not_a_failure():
    broken = Sandbox(Limits(timeout_s=3.0))
    broken.harness = b"import sys\nsys.exit('harness out of date')\n"  # what a mismatched harness did once
    result = broken.run("def f():\n    return 1\n", "assert f() == 1\n")
    assert result.status is Status.ERROR and not result.passed
    assert "before the program ran" in result.error and "harness out of date" in result.error


def _humaneval(task_id: str) -> Problem:
    return next(p for p in load_problems(Task.HUMANEVAL) if p.task_id == task_id)


def test_humaneval_ships_164_problems_offline():
    problems = load_problems(Task.HUMANEVAL)
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0"
    assert all(p.test.rstrip().endswith(f"check({p.entry_point})") for p in problems)


@pytest.mark.parametrize("chat", [True, False])
def test_a_known_correct_completion_scores_1_and_a_known_wrong_one_0(chat: bool):
    problem = _humaneval("HumanEval/0")  # has_close_elements
    request = Request("prompt", (), chat=chat)
    if chat:  # a chat reply is a whole script (helpers of the prompt stay defined before it)
        right = (
            "from typing import List\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
            "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```"
        )
        wrong = "def has_close_elements(numbers, threshold):\n    return False\n"
    else:  # a direct completion continues the function body
        right = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
        wrong = "    return True\n"
    assert SANDBOX.run(program_of(problem, right, request), problem.test).passed
    failed = SANDBOX.run(program_of(problem, wrong, request), problem.test)
    assert failed.status is Status.FAILED and "AssertionError" in failed.error


def test_a_chat_reply_may_use_the_helpers_its_prompt_defines():
    problem = _humaneval("HumanEval/10")  # make_palindrome; the prompt defines is_palindrome
    reply = (
        "def make_palindrome(string: str) -> str:\n"
        "    for i in range(len(string) + 1):\n"
        "        if is_palindrome(string[i:]):\n"
        "            return string + string[:i][::-1]\n"
    )
    assert SANDBOX.run(program_of(problem, reply, Request("p", (), chat=True)), problem.test).passed


MBPP_ROWS = (
    '{"task_id": 2, "text": "Write a function to find the shared elements from the given two lists.", '
    '"code": "def similar_elements(a, b):\\n    return tuple(set(a) & set(b))", "test_setup_code": "", '
    '"test_list": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))"]}\n'
    '{"task_id": 3, "text": "Write a python function to identify non-prime numbers.", '
    '"code": "def is_not_prime(n):\\n    return n < 2 or any(n % d == 0 for d in range(2, int(n ** 0.5) + 1))", '
    '"test_setup_code": "", "test_list": ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True"]}\n'
)


def test_mbpp_problems_from_a_file_score_their_reference_code(tmp_path: Path):
    data = tmp_path / "mbpp.jsonl"
    data.write_text(MBPP_ROWS, encoding="utf-8")
    problems = load_problems(Task.MBPP, data)
    assert [p.task_id for p in problems] == ["Mbpp/2", "Mbpp/3"]
    assert problems[1].entry_point == "is_not_prime" and "assert is_not_prime(2) == False" in problems[1].prompt
    chat = Request("p", (), chat=True)
    assert SANDBOX.run(program_of(problems[1], "def is_not_prime(n):\n    return n < 2 or any(n % d == 0 "
                                  "for d in range(2, n))\n", chat), problems[1].test).passed  # fmt: skip
    assert not SANDBOX.run(
        program_of(problems[1], "def is_not_prime(n):\n    return True\n", chat), problems[1].test
    ).passed


PLUS_ROW = (
    '{"task_id": "HumanEval/900", "prompt": "def mean(xs):\\n    \\"\\"\\"The mean of xs.\\"\\"\\"\\n", '
    '"entry_point": "mean", "canonical_solution": "    return sum(xs) / len(xs)\\n", '
    '"base_input": [[[1, 2, 3]]], "plus_input": [[[0.1, 0.2]], [[5]]], "atol": 0}\n'
)


def test_evalplus_problems_compare_with_the_canonical_solution_on_every_input(tmp_path: Path):
    data = tmp_path / "plus.jsonl"
    data.write_text(PLUS_ROW, encoding="utf-8")
    (problem,) = load_problems(Task.HUMANEVAL_PLUS, data)
    direct = Request("p", (), chat=False)
    assert SANDBOX.run(program_of(problem, "    return sum(xs) / len(xs)\n", direct), problem.test).passed
    # Right on the base input, off on a plus input beyond the default float tolerance:
    rounded = SANDBOX.run(program_of(problem, "    return round(sum(xs) / len(xs), 1)\n", direct), problem.test)
    assert rounded.status is Status.FAILED and "input #1" in rounded.error
    integer = SANDBOX.run(program_of(problem, "    return sum(xs) // len(xs)\n", direct), problem.test)
    assert integer.status is Status.FAILED and "input #1" in integer.error


class _Template:
    has_chat_template = True

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


def test_the_chat_request_opens_a_python_fence_and_stops_at_its_end():
    problem = _humaneval("HumanEval/0")
    request = build_request(problem, "humaneval", _Template())
    assert request.chat and request.text.endswith("```python\n")
    assert "Please provide a self-contained Python script" in request.text and problem.prompt.strip() in request.text
    assert "\n```" in request.stops
    direct = build_request(problem, "humaneval", _Template(), chat=False)
    assert direct.text == problem.prompt and "\ndef " in direct.stops
