"""Read playbook YAML with the line of every key, so schema errors can name file, line and field.

Also resolves ``extends: other.yaml`` (a template) by a deep merge in which the extending file wins;
every value keeps the file and line it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apr.errors import AprError

Loc = tuple[str | int, ...]


@dataclass
class SourceMap:
    """Where each value of a loaded document was written: path of keys/indexes → (file, line)."""

    lines: dict[Loc, tuple[Path, int]] = field(default_factory=dict)

    def locate(self, loc: Loc) -> tuple[Path, int] | None:
        """The position of ``loc`` or of its nearest written ancestor (a missing field points at its parent)."""
        for end in range(len(loc), -1, -1):
            found = self.lines.get(tuple(loc[:end]))
            if found is not None:
                return found
        return None


def _walk(node: yaml.Node, path: Loc, file: Path, out: dict[Loc, tuple[Path, int]]) -> None:
    out.setdefault(path, (file, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                raise AprError(f"{file}:{line}: duplicate key {key!r} (first at line {seen[key]}); keep one")
            seen[key] = line
            out[(*path, key)] = (file, line)
            _walk(value_node, (*path, key), file, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            out[(*path, index)] = (file, item.start_mark.line + 1)
            _walk(item, (*path, index), file, out)


def read_yaml(path: Path) -> tuple[dict[str, Any], SourceMap]:
    """One YAML file → (mapping, line map); AprError with file:line for syntax errors and duplicate keys."""
    if not path.is_file():
        raise AprError(f"{path}: playbook not found; pass a path to a .yaml playbook (see playbooks/models/)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise AprError(f"{path}: not UTF-8 text (byte {err.start}); save the playbook as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise AprError(f"{where}: invalid YAML: {problem}; fix the syntax") from None
    if not isinstance(data, dict) or node is None:
        raise AprError(f"{path}:1: a playbook must be a YAML mapping (key: value), got {type(data).__name__}")
    source = SourceMap()
    _walk(node, (), path, source.lines)
    return data, source


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _drop_subtree(lines: dict[Loc, tuple[Path, int]], data: Any, path: Loc) -> None:
    """Forget the base's lines under keys the override replaced wholesale (lists, scalars)."""
    if isinstance(data, dict):
        for key, value in data.items():
            sub = (*path, key)
            if not isinstance(value, dict):
                for loc in [loc for loc in lines if loc[: len(sub)] == sub and len(loc) > len(sub)]:
                    del lines[loc]
            else:
                _drop_subtree(lines, value, sub)


def read_with_extends(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], SourceMap]:
    """Read ``path``; if it says ``extends: FILE`` (relative to it), merge it over that file, recursively."""
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise AprError(f"{path}: 'extends' forms a cycle ({cycle}); remove one link")
    data, source = read_yaml(path)
    parent = data.get("extends")
    if parent is None:
        return data, source
    if not isinstance(parent, str):
        line = source.lines[("extends",)][1]
        raise AprError(f"{path}:{line}: extends: expected a file path, got {type(parent).__name__}")
    base_path = path.parent / parent
    if not base_path.is_file():
        line = source.lines[("extends",)][1]
        raise AprError(f"{path}:{line}: extends: {base_path} not found; give a path relative to this playbook")
    base, base_source = read_with_extends(base_path, (*_chain, path))
    base.pop("extends", None)
    merged_lines = dict(base_source.lines)
    _drop_subtree(merged_lines, data, ())
    merged_lines.update(source.lines)
    return _merge(base, data), SourceMap(merged_lines)
