"""Scenario pools: seeded and reproducible, independent per pool, each prompt carrying oracles it passes when
answered correctly (property-based with hypothesis)."""

from __future__ import annotations

import ast

from hypothesis import given, settings
from hypothesis import strategies as st

from apr.qa.oracles import evaluate
from apr.qa.oracles.arithmetic import parse_question
from apr.qa.oracles.base import Generation, Language, OracleName, VerdictKind
from apr.qa.scenarios import Pool, PoolCounts, PromptStyle, ScenarioSettings, assign, generate_prompts

EVERY_POOL = PoolCounts(arithmetic=3, code=4, unicode=2, facts=2, long_context=1, empty=1, whitespace=1)
ALL_LANGUAGES = tuple(Language)


def settings_for(seed: int, style: PromptStyle = PromptStyle.INSTRUCT, **counts) -> ScenarioSettings:
    pools = PoolCounts(**counts) if counts else EVERY_POOL
    return ScenarioSettings(seed=seed, style=style, pools=pools, code_languages=ALL_LANGUAGES)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), style=st.sampled_from(PromptStyle))
def test_same_seed_same_prompts_and_ids(seed, style):
    assert generate_prompts(settings_for(seed, style)) == generate_prompts(settings_for(seed, style))


def test_different_seeds_give_different_prompts():
    texts = {tuple(p.text for p in generate_prompts(settings_for(seed))) for seed in range(5)}
    assert len(texts) == 5


def test_a_pool_count_never_changes_the_other_pools():
    few = generate_prompts(settings_for(3, arithmetic=1, facts=2))
    many = generate_prompts(settings_for(3, arithmetic=5, facts=2))
    assert [p for p in few if p.pool is Pool.FACTS] == [p for p in many if p.pool is Pool.FACTS]
    assert [p for p in many if p.pool is Pool.ARITHMETIC][:1] == [p for p in few if p.pool is Pool.ARITHMETIC]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), style=st.sampled_from(PromptStyle))
def test_arithmetic_prompts_carry_a_solvable_question_and_accept_the_true_answer(seed, style):
    for prompt in generate_prompts(settings_for(seed, style, arithmetic=3)):
        value = parse_question(prompt.text)
        assert value is not None and value == int(value)
        reply = Generation(text=f"{int(value)}", finish_reason="stop", completion_tokens=2, max_tokens=64)
        verdicts = {spec.name: evaluate(spec.name, prompt, reply).kind for spec in prompt.oracles}
        assert verdicts[OracleName.ARITHMETIC] is VerdictKind.PASS
        assert verdicts[OracleName.NON_EMPTY] is VerdictKind.PASS
        wrong = evaluate(OracleName.ARITHMETIC, prompt, f"{int(value) + 1}")
        assert wrong.kind is VerdictKind.FAIL


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_code_prompts_cover_the_languages_and_name_the_function(seed):
    prompts = [p for p in generate_prompts(settings_for(seed)) if p.pool is Pool.CODE]
    specs = [p.spec_for(OracleName.CODE) for p in prompts]
    assert {s.language for s in specs} == set(ALL_LANGUAGES)
    for prompt, spec in zip(prompts, specs):
        assert spec.function_name in prompt.text
    python = next(p for p, s in zip(prompts, specs) if s.language is Language.PYTHON)
    name = python.spec_for(OracleName.CODE).function_name
    good = f"```python\ndef {name}(a, b=0):\n    return a\n```"
    ast.parse(good.strip("`").removeprefix("python"))
    assert evaluate(OracleName.CODE, python, good).passed


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), words=st.integers(50, 2000))
def test_long_context_plants_the_answer_inside_a_passage_of_the_requested_length(seed, words):
    config = ScenarioSettings(seed=seed, pools=PoolCounts(long_context=1), long_context_words=words)
    (prompt,) = generate_prompts(config)
    (code,) = prompt.spec_for(OracleName.EXPECTED_TEXT).any_of
    assert f"vault is {code}." in prompt.text and len(prompt.text.split()) >= words
    assert evaluate(OracleName.EXPECTED_TEXT, prompt, f"The code is {code}.").passed


def test_unicode_prompts_expect_non_ascii_text():
    prompts = [p for p in generate_prompts(settings_for(1, unicode=6))]
    assert all(any(ord(ch) > 127 for ch in p.spec_for(OracleName.EXPECTED_TEXT).any_of[0]) for p in prompts)
    assert any("你好" in p.text or "你好" in p.spec_for(OracleName.EXPECTED_TEXT).any_of for p in prompts)


def test_empty_and_whitespace_prompts_allow_a_clean_refusal_and_judge_nothing():
    prompts = {p.pool: p for p in generate_prompts(settings_for(0))}
    assert prompts[Pool.EMPTY].text == "" and prompts[Pool.WHITESPACE].text.strip() == ""
    for pool in (Pool.EMPTY, Pool.WHITESPACE):
        assert prompts[pool].allows_refusal and prompts[pool].oracles == ()


def test_instruct_prompts_expect_eos_and_completion_prompts_do_not():
    instruct = generate_prompts(settings_for(0, PromptStyle.INSTRUCT, arithmetic=2, facts=2))
    completion = generate_prompts(settings_for(0, PromptStyle.COMPLETION, arithmetic=2, facts=2))
    assert all(OracleName.STOPS_ON_EOS in p.oracle_names for p in instruct)
    assert all(OracleName.STOPS_ON_EOS not in p.oracle_names for p in completion)


@given(n=st.integers(1, 12), per_cell=st.integers(1, 4), combos=st.integers(1, 9))
def test_rotation_covers_the_pool_before_repeating(n, per_cell, combos):
    prompts = generate_prompts(settings_for(0, facts=n))
    seen = [p.id for c in range(combos) for p in assign(prompts, c, per_cell)]
    assert all(len(assign(prompts, c, per_cell)) == min(per_cell, n) for c in range(combos))
    assert len(set(seen)) == min(n, len(seen))
    assert assign(prompts, 5, None) == prompts
