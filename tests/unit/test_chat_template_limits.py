"""Chat templates are untrusted code from the model file: sandboxed, and bounded in time, output and sizes."""

from __future__ import annotations

import resource
import sys
import time

import pytest

from apr.formats.chat_template import MAX_RENDERED_CHARS, ChatTemplateError, render_chat

MESSAGES = [{"role": "user", "content": "hi"}]


def render(source: str, time_limit_s: float = 5.0) -> str:
    return render_chat(source, MESSAGES, add_generation_prompt=True, special_tokens={}, time_limit_s=time_limit_s)


def test_a_real_template_renders_and_tracing_is_restored():
    before = sys.gettrace()
    assert render("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}") == "<user>hi"
    assert sys.gettrace() is before


@pytest.mark.parametrize(
    ("source", "phrase"),
    [
        ("{{ 'lol' * 10000000000 }}", "repeats"),
        ("{{ [1] * 10000000000 }}", "repeats"),
        ("{{ '%999999999999s' % 'a' }}", "wider"),
        ("{{ 7 ** 100000000 }}", "beyond its limits"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recurses"),
        ("{{ raise_exception('no system turns') }}", "no system turns"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{% for %}", "chat template failed"),
        ("{{ ''.__class__.__mro__ }}", "chat template failed"),
    ],
)
def test_a_hostile_or_broken_template_is_one_error(source, phrase):
    started = time.monotonic()
    with pytest.raises(ChatTemplateError) as caught:
        render(source)
    assert phrase in str(caught.value) and "\n" not in str(caught.value)
    assert time.monotonic() - started < 2.0


def test_a_loop_that_renders_nothing_is_stopped_in_time():
    started = time.monotonic()
    with pytest.raises(ChatTemplateError, match="longer than 0.5 s"):
        render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", time_limit_s=0.5)
    assert time.monotonic() - started < 3.0


def test_output_is_bounded_without_growing_memory_past_it():
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ChatTemplateError, match=f"more than {MAX_RENDERED_CHARS}"):
        render("{% for i in range(100000) %}{% for j in range(100000) %}0123456789{% endfor %}{% endfor %}")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 200


def test_the_error_is_a_value_error_for_callers_and_an_apr_error_for_the_cli():
    from apr.errors import AprError

    with pytest.raises(ValueError):
        render("{% for %}")
    with pytest.raises(AprError):
        render("{% for %}")
