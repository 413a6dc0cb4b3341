"""The code-editing tasks of bench/bench_lookup.py: a Python function, an edit instruction, the whole edited function.

Written for this benchmark (not taken from a dataset). Each edit is small, so a correct answer repeats most
of its prompt: the case prompt-lookup decoding is for. ``expected`` is one correct answer; the benchmark
reports how many replies match it exactly (a model-quality figure, not the speed figure it is about).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EditTask:
    name: str
    instruction: str
    function: str
    expected: str


TASKS: tuple[EditTask, ...] = (
    EditTask(
        "rename-variable",
        "Rename the variable `total` to `running_sum`.",
        """def sum_positive(values):
    total = 0
    for value in values:
        if value > 0:
            total += value
    return total
""",
        """def sum_positive(values):
    running_sum = 0
    for value in values:
        if value > 0:
            running_sum += value
    return running_sum
""",
    ),
    EditTask(
        "add-type-hints",
        "Add type hints: `words` is a list of strings and the function returns a dict from str to int.",
        """def count_words(words):
    counts = {}
    for word in words:
        key = word.lower()
        counts[key] = counts.get(key, 0) + 1
    return counts
""",
        """def count_words(words: list[str]) -> dict[str, int]:
    counts = {}
    for word in words:
        key = word.lower()
        counts[key] = counts.get(key, 0) + 1
    return counts
""",
    ),
    EditTask(
        "guard-empty",
        "Return 0.0 when `numbers` is empty instead of dividing by zero.",
        """def mean(numbers):
    total = 0.0
    for number in numbers:
        total += number
    return total / len(numbers)
""",
        """def mean(numbers):
    if not numbers:
        return 0.0
    total = 0.0
    for number in numbers:
        total += number
    return total / len(numbers)
""",
    ),
    EditTask(
        "change-comparison",
        "Make the search find the last index of `target` instead of the first.",
        """def find_index(items, target):
    for index in range(len(items)):
        if items[index] == target:
            return index
    return -1
""",
        """def find_index(items, target):
    for index in range(len(items) - 1, -1, -1):
        if items[index] == target:
            return index
    return -1
""",
    ),
    EditTask(
        "add-parameter",
        "Add a parameter `sep` with default `', '` and use it instead of the hard-coded separator.",
        """def format_names(first_names, last_names):
    parts = []
    for first, last in zip(first_names, last_names):
        parts.append(first + " " + last)
    return ", ".join(parts)
""",
        """def format_names(first_names, last_names, sep=", "):
    parts = []
    for first, last in zip(first_names, last_names):
        parts.append(first + " " + last)
    return sep.join(parts)
""",
    ),
    EditTask(
        "off-by-one",
        "Fix the bug: the loop skips the last element of `values`.",
        """def max_value(values):
    best = values[0]
    for i in range(1, len(values) - 1):
        if values[i] > best:
            best = values[i]
    return best
""",
        """def max_value(values):
    best = values[0]
    for i in range(1, len(values)):
        if values[i] > best:
            best = values[i]
    return best
""",
    ),
    EditTask(
        "add-docstring",
        'Add the docstring """Return the n-th Fibonacci number (fib(0) == 0).""" as the first line of the body.',
        """def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
""",
        '''def fib(n):
    """Return the n-th Fibonacci number (fib(0) == 0)."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
''',
    ),
    EditTask(
        "rename-function",
        "Rename the function to `is_palindrome_text`.",
        """def is_palindrome(text):
    cleaned = []
    for char in text:
        if char.isalnum():
            cleaned.append(char.lower())
    return cleaned == cleaned[::-1]
""",
        """def is_palindrome_text(text):
    cleaned = []
    for char in text:
        if char.isalnum():
            cleaned.append(char.lower())
    return cleaned == cleaned[::-1]
""",
    ),
    EditTask(
        "raise-on-negative",
        "Raise `ValueError('n must be non-negative')` when `n` is negative.",
        """def factorial(n):
    result = 1
    for k in range(2, n + 1):
        result *= k
    return result
""",
        """def factorial(n):
    if n < 0:
        raise ValueError('n must be non-negative')
    result = 1
    for k in range(2, n + 1):
        result *= k
    return result
""",
    ),
    EditTask(
        "list-comprehension",
        "Replace the loop that builds `squares` with a list comprehension.",
        """def even_squares(numbers):
    squares = []
    for number in numbers:
        if number % 2 == 0:
            squares.append(number * number)
    return squares
""",
        """def even_squares(numbers):
    squares = [number * number for number in numbers if number % 2 == 0]
    return squares
""",
    ),
    EditTask(
        "change-default",
        "Change the default `width` from 80 to 100.",
        """def wrap_text(text, width=80):
    lines = []
    line = ""
    for word in text.split():
        if len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = word if not line else line + " " + word
    if line:
        lines.append(line)
    return lines
""",
        """def wrap_text(text, width=100):
    lines = []
    line = ""
    for word in text.split():
        if len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = word if not line else line + " " + word
    if line:
        lines.append(line)
    return lines
""",
    ),
    EditTask(
        "strip-input",
        "Strip surrounding whitespace from each line before parsing it.",
        """def parse_pairs(lines):
    pairs = {}
    for line in lines:
        if not line or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        pairs[key] = value
    return pairs
""",
        """def parse_pairs(lines):
    pairs = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        pairs[key] = value
    return pairs
""",
    ),
    EditTask(
        "reverse-sort",
        "Sort the scores from highest to lowest instead of lowest to highest.",
        """def top_scores(scores, count):
    ordered = sorted(scores)
    result = []
    for score in ordered[:count]:
        result.append(round(score, 2))
    return result
""",
        """def top_scores(scores, count):
    ordered = sorted(scores, reverse=True)
    result = []
    for score in ordered[:count]:
        result.append(round(score, 2))
    return result
""",
    ),
    EditTask(
        "use-enumerate",
        "Use `enumerate` instead of indexing with `range(len(...))`.",
        """def label_items(items):
    labels = []
    for i in range(len(items)):
        labels.append(str(i + 1) + ". " + items[i])
    return labels
""",
        """def label_items(items):
    labels = []
    for i, item in enumerate(items):
        labels.append(str(i + 1) + ". " + item)
    return labels
""",
    ),
    EditTask(
        "clamp-result",
        "Clamp the returned percentage to the range 0 to 100.",
        """def percentage(part, whole):
    if whole == 0:
        return 0.0
    value = 100.0 * part / whole
    return round(value, 1)
""",
        """def percentage(part, whole):
    if whole == 0:
        return 0.0
    value = 100.0 * part / whole
    value = max(0.0, min(100.0, value))
    return round(value, 1)
""",
    ),
    EditTask(
        "count-vowels-uppercase",
        "Make the vowel count case-insensitive.",
        """def count_vowels(text):
    count = 0
    for char in text:
        if char in "aeiou":
            count += 1
    return count
""",
        """def count_vowels(text):
    count = 0
    for char in text.lower():
        if char in "aeiou":
            count += 1
    return count
""",
    ),
    EditTask(
        "return-tuple",
        "Return both the minimum and the maximum as a tuple `(low, high)`.",
        """def value_range(values):
    low = values[0]
    high = values[0]
    for value in values[1:]:
        if value < low:
            low = value
        if value > high:
            high = value
    return high - low
""",
        """def value_range(values):
    low = values[0]
    high = values[0]
    for value in values[1:]:
        if value < low:
            low = value
        if value > high:
            high = value
    return (low, high)
""",
    ),
    EditTask(
        "skip-none",
        "Skip `None` entries when merging.",
        """def merge_dicts(dicts):
    merged = {}
    for entry in dicts:
        for key, value in entry.items():
            merged[key] = value
    return merged
""",
        """def merge_dicts(dicts):
    merged = {}
    for entry in dicts:
        if entry is None:
            continue
        for key, value in entry.items():
            merged[key] = value
    return merged
""",
    ),
    EditTask(
        "rename-parameter",
        "Rename the parameter `s` to `sentence` everywhere.",
        """def capitalize_words(s):
    words = s.split(" ")
    result = []
    for word in words:
        if word:
            result.append(word[0].upper() + word[1:])
        else:
            result.append(word)
    return " ".join(result)
""",
        """def capitalize_words(sentence):
    words = sentence.split(" ")
    result = []
    for word in words:
        if word:
            result.append(word[0].upper() + word[1:])
        else:
            result.append(word)
    return " ".join(result)
""",
    ),
    EditTask(
        "early-exit",
        "Return `True` as soon as a duplicate is found instead of counting all of them.",
        """def has_duplicates(items):
    seen = set()
    duplicates = 0
    for item in items:
        if item in seen:
            duplicates += 1
        seen.add(item)
    return duplicates > 0
""",
        """def has_duplicates(items):
    seen = set()
    for item in items:
        if item in seen:
            return True
        seen.add(item)
    return False
""",
    ),
    EditTask(
        "change-step",
        "Make the function return every third character instead of every second.",
        """def every_other(text):
    chars = []
    for index in range(0, len(text), 2):
        chars.append(text[index])
    return "".join(chars)
""",
        """def every_other(text):
    chars = []
    for index in range(0, len(text), 3):
        chars.append(text[index])
    return "".join(chars)
""",
    ),
    EditTask(
        "add-logging-count",
        "Also return how many lines were skipped, as `(kept, skipped)`.",
        """def non_empty_lines(text):
    kept = []
    for line in text.splitlines():
        if line.strip():
            kept.append(line)
    return kept
""",
        """def non_empty_lines(text):
    kept = []
    skipped = 0
    for line in text.splitlines():
        if line.strip():
            kept.append(line)
        else:
            skipped += 1
    return (kept, skipped)
""",
    ),
)
