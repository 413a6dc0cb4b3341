"""How `apr chat` splits its input into user turns: lines, three-quote blocks, JSON messages."""

from __future__ import annotations

import json

from apr.cli.engine_chat import Turn, read_turns


def turns(lines: list[str], *, piped: bool = True) -> list[Turn]:
    feed = iter(lines)

    def read_line(_prompt: str) -> str:
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    return list(read_turns(read_line, piped=piped))


def test_each_line_is_a_turn():
    assert turns(["hi", "/reset", "second"]) == [Turn("hi"), Turn("/reset"), Turn("second")]


def test_a_three_quote_block_is_one_turn_with_its_newlines():
    got = turns(['"""', "def f():", "    return 1", '"""', "after"])
    assert got == [Turn("def f():\n    return 1", literal=True), Turn("after")]


def test_a_block_may_open_and_close_on_its_text_lines():
    assert turns(['"""first', "second", 'third"""']) == [Turn("first\nsecond\nthird", literal=True)]
    assert turns(['"""one line"""']) == [Turn("one line", literal=True)]


def test_a_block_cut_by_the_end_of_input_is_sent_as_read(capsys):
    assert turns(['"""', "a", "b"]) == [Turn("a\nb", literal=True)]
    assert "ended inside" in capsys.readouterr().err


def test_a_piped_json_message_is_one_exact_turn():
    text = 'def f():\n    """Doc."""\n    return "你好"'
    line = json.dumps({"role": "user", "content": text}, ensure_ascii=False)
    assert turns([line, "/exit"]) == [Turn(text, literal=True), Turn("/exit")]


def test_json_is_only_read_from_a_pipe_and_only_as_a_message():
    line = json.dumps({"content": "x"})
    assert turns([line], piped=False) == [Turn(line)]
    assert turns(['{"not": "a message"}', "{broken"]) == [Turn('{"not": "a message"}'), Turn("{broken")]
