"""Functional correctness: code-generation benchmarks (HumanEval, MBPP, EvalPlus) run through the engine and
scored by executing each generated program in a sandbox (`apr eval`, the FUNCTIONAL-CORRECTNESS gate)."""
