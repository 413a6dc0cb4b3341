"""Read playbook YAML with the line of every key, so schema errors can name file, line and field.

Also resolves ``extends: other.yaml`` (a template) by a deep merge in which the extending file wins;
every value keeps the file and line it came from.

Playbooks are input from anyone, so reading is bounded: a size limit before reading, YAML aliases refused
(a few lines of anchors expand to gigabytes), numbers finite, and ``extends`` kept inside the playbooks
tree (it names YAML templates, never other files, and an error never shows what a file holds).
"""

from __future__ import annotations

import math
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apr.errors import AprError

# The largest playbook in the repository is ~2 KB; a megabyte is a mistake or an attack.
MAX_PLAYBOOK_BYTES = 1_000_000
PLAYBOOK_SUFFIXES = (".yaml", ".yml")
# Playbooks nest four or five levels; PyYAML's composer recurses once per level.
MAX_NESTING = 32
# libyaml's parser where present (fast, and linear on hostile nesting), else PyYAML's own.
_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

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
    text = _read_bounded(path)
    try:
        return _parse(path, text)
    except RecursionError:
        raise AprError(f"{path}: the YAML nests too deeply to be a playbook; flatten it") from None


def _parse(path: Path, text: str) -> tuple[dict[str, Any], SourceMap]:
    try:
        _check_structure(path, text)
        node = yaml.compose(text, Loader=_LOADER)
        data = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise AprError(f"{where}: invalid YAML: {problem}; fix the syntax") from None
    if not isinstance(data, dict) or node is None:
        raise AprError(f"{path}:1: a playbook must be a YAML mapping (key: value), got {type(data).__name__}")
    source = SourceMap()
    _walk(node, (), path, source.lines)
    _refuse_non_finite(data, (), source)
    return data, source


def _read_bounded(path: Path) -> str:
    """The file's text, refused before reading when it is not a regular file or is too large."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise AprError(f"{path}: playbook not found; pass a path to a .yaml playbook (see playbooks/models/)") from None
    except OSError as err:
        raise AprError(f"{path}: cannot read the playbook: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise AprError(f"{path}: not a regular file; pass a path to a .yaml playbook (see playbooks/models/)")
    if info.st_size > MAX_PLAYBOOK_BYTES:
        raise AprError(
            f"{path}: {info.st_size} bytes is too large for a playbook (limit {MAX_PLAYBOOK_BYTES}); "
            "playbooks are a few kilobytes of YAML"
        )
    try:
        data = path.read_bytes()[: MAX_PLAYBOOK_BYTES + 1]
    except OSError as err:
        raise AprError(f"{path}: cannot read the playbook: {err.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise AprError(f"{path}: not UTF-8 text (byte {err.start}); save the playbook as UTF-8") from None


def _check_structure(path: Path, text: str) -> None:
    """From the event stream, before anything is built: YAML aliases (``*name``) can expand a small file
    exponentially ("billion laughs") and playbooks need none; deep nesting would exhaust the stack."""
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER):
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise AprError(
                f"{path}:{mark.line + 1}:{mark.column + 1}: YAML aliases (*{event.anchor}) are not allowed in "
                "playbooks; write the value out (or share it through 'extends')"
            )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                raise AprError(
                    f"{path}:{mark.line + 1}:{mark.column + 1}: the YAML nests deeper than {MAX_NESTING} levels; "
                    "a playbook needs a handful"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _refuse_non_finite(data: Any, loc: Loc, source: SourceMap) -> None:
    """.inf and .nan are YAML numbers but no playbook setting means them (a deadline of .inf never ends)."""
    if isinstance(data, float) and not math.isfinite(data):
        found = source.locate(loc)
        where = f"{found[0]}:{found[1]}" if found else "playbook"
        field_name = ".".join(str(part) for part in loc) or "value"
        raise AprError(f"{where}: {field_name}: {data} is not a finite number; give a finite value")
    if isinstance(data, dict):
        for key, value in data.items():
            _refuse_non_finite(value, (*loc, key), source)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            _refuse_non_finite(value, (*loc, index), source)


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


def playbooks_tree(path: Path) -> Path:
    """The tree ``extends`` may reach from the playbook ``path``: its nearest ancestor folder named
    ``playbooks`` (the repository layout: playbooks/models extends playbooks/templates), else its own folder."""
    for folder in path.parents:
        if folder.name == "playbooks":
            return folder
    return path.parent


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
    line = source.lines[("extends",)][1]
    base_path = (path.parent / parent).resolve()
    tree = playbooks_tree(_chain[0] if _chain else path)
    if not base_path.is_relative_to(tree) or base_path.suffix not in PLAYBOOK_SUFFIXES:
        raise AprError(
            f"{path}:{line}: extends: {parent!r} is not a .yaml file inside {tree}; "
            "a playbook extends a template of its own playbooks tree (such as ../templates/mvp.yaml)"
        )
    if not base_path.is_file():
        raise AprError(f"{path}:{line}: extends: {base_path} not found; give a path relative to this playbook")
    base, base_source = read_with_extends(base_path, (*_chain, path))
    base.pop("extends", None)
    merged_lines = dict(base_source.lines)
    _drop_subtree(merged_lines, data, ())
    merged_lines.update(source.lines)
    return _merge(base, data), SourceMap(merged_lines)
