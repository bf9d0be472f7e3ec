"""YAML -> plain dict with the position of every node (named reader, not load: ``inflang.load`` is the API).

Only the YAML core schema is accepted (maps, lists, strings, numbers, booleans, null): Python object tags
and other unknown tags are refused, duplicate keys are errors, aliases are bounded, and ``extends:``
deep-merges a base file whose path is relative to the including file (this file's keys win).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from inflang.errors import Position, StudyError

MAX_FILE_BYTES = 1_000_000
MAX_NODES = 100_000
MAX_DEPTH = 64

PathKey = tuple[str | int, ...]


@dataclass
class Document:
    """A loaded study: its data, and the position of every key and value by its path."""

    data: dict[str, Any]
    file: str
    positions: dict[PathKey, Position] = field(default_factory=dict)
    value_positions: dict[PathKey, Position] = field(default_factory=dict)
    text: str = ""

    def position(self, path: PathKey, value: bool = False) -> Position:
        """Where the deepest existing node on ``path`` is: its key, or with ``value`` its value."""
        for end in range(len(path), -1, -1):
            key = tuple(path[:end])
            found = (self.value_positions.get(key) if value and end == len(path) else None) or self.positions.get(key)
            if found is not None:
                return found
        return Position(self.file, 1, 1)



def _pos(file: str, node: Node) -> Position:
    return Position(file, node.start_mark.line + 1, node.start_mark.column + 1)


_SAFE_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


class _Builder:
    """Turns a composed YAML node tree into Python values, recording positions; bounded in size."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.positions: dict[PathKey, Position] = {}
        self.value_positions: dict[PathKey, Position] = {}
        self.count = 0
        self._constructor = yaml.constructor.SafeConstructor()

    def build(self, node: Node, path: PathKey, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise StudyError.at(
                _pos(self.file, node), _dotted(path), f"document expands to more than {MAX_NODES} nodes",
                "aliases may be multiplying the document (an alias bomb); write the values out",
            )
        if depth > MAX_DEPTH:
            raise StudyError.at(_pos(self.file, node), _dotted(path), f"nested deeper than {MAX_DEPTH} levels")
        if node.tag not in _SAFE_TAGS:
            raise StudyError.at(
                _pos(self.file, node), _dotted(path), f"tag '{node.tag}' is not allowed",
                "a study holds only maps, lists, strings, numbers, booleans and null",
            )
        self.positions.setdefault(path, _pos(self.file, node))
        self.value_positions[path] = _pos(self.file, node)
        if isinstance(node, MappingNode):
            out: dict[str, Any] = {}
            key_nodes: dict[str, Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise StudyError.at(_pos(self.file, key_node), _dotted(path), "merge keys ('<<') are not allowed",
                                        "use 'extends:' to build on another study")
                key = self.build(key_node, path + ("<key>",), depth + 1)
                if not isinstance(key, str):
                    raise StudyError.at(_pos(self.file, key_node), _dotted(path),
                                        f"keys must be strings, got {key!r}")
                if key in key_nodes:
                    first = _pos(self.file, key_nodes[key])
                    raise StudyError.at(_pos(self.file, key_node), _dotted(path + (key,)),
                                        f"duplicate key '{key}' (first defined at line {first.line})")
                key_nodes[key] = key_node
                self.positions[path + (key,)] = _pos(self.file, key_node)
                out[key] = self.build(value_node, path + (key,), depth + 1)
            return out
        if isinstance(node, SequenceNode):
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        return self._constructor.construct_object(node)


def _dotted(path: PathKey) -> str:
    return ".".join(str(p) for p in path if p != "<key>")


def read_text(path: Path) -> str:
    """The text of a study file, or a StudyError that says why it cannot be read."""
    here = Position(str(path), 1, 1)
    if not path.exists():
        raise StudyError.at(here, "", "no such file")
    if path.is_dir():
        raise StudyError.at(here, "", "is a directory, not a study file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise StudyError.at(here, "", f"file is {size} bytes; a study file is at most {MAX_FILE_BYTES} bytes")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise StudyError.at(Position(str(path), line, col), "", "file is not valid UTF-8") from None


def parse(text: str, file: str) -> Document:
    """Parse one YAML document into a Document (no ``extends`` handling)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = (exc.problem or exc.context or "invalid YAML").strip()
        hint = None
        if "\\t" in message or "tab" in message.lower():
            hint = "indent with spaces, not tabs"
        elif "mapping values are not allowed" in message or "expected <block end>" in message:
            hint = "check the indentation: keys of one map start in the same column, and 'key: value' needs a space"
        raise StudyError.at(Position(file, line, col), "", f"invalid YAML: {message}", hint) from None
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        raise StudyError.at(Position(file, line, col), "",
                            f"invalid YAML: control character #x{exc.character:04x} is not allowed") from None
    except yaml.YAMLError as exc:
        raise StudyError.at(Position(file, 1, 1), "", f"invalid YAML: {str(exc).splitlines()[0]}") from None
    if root is None:
        raise StudyError.at(Position(file, 1, 1), "", "the file is empty",
                            "a study needs at least 'study:', 'dataset:' and 'model:'")
    builder = _Builder(file)
    data = builder.build(root, (), 0)
    if not isinstance(data, dict):
        raise StudyError.at(_pos(file, root), "", "a study file must be a map of keys (study:, dataset:, ...)")
    return Document(data=data, file=file, positions=builder.positions,
                    value_positions=builder.value_positions, text=text)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Maps merge key by key; anything else in ``over`` replaces what ``base`` had."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load(path: str | Path, _chain: tuple[Path, ...] = ()) -> Document:
    """Load a study file and the bases it extends, merged; positions point into the file that set a value."""
    path = Path(path)
    shown = str(path)
    resolved = path.resolve()
    doc = parse(read_text(path), shown)
    base_ref = doc.data.pop("extends", None)
    if base_ref is None:
        return doc
    where = doc.positions.get(("extends",), Position(shown, 1, 1))
    if not isinstance(base_ref, str):
        raise StudyError.at(where, "extends", "must be a path to a base study file")
    base_path = path.parent / base_ref
    if base_path.resolve() in _chain + (resolved,):
        cycle = " -> ".join(p.name for p in _chain + (resolved, base_path.resolve()))
        raise StudyError.at(where, "extends", f"extends cycle: {cycle}")
    if not base_path.exists():
        raise StudyError.at(where, "extends", f"base file '{base_ref}' not found (looked for {base_path})")
    base = load(base_path, _chain + (resolved,))
    positions = {**base.positions, **doc.positions}
    value_positions = {**base.value_positions, **doc.value_positions}
    return Document(data=deep_merge(base.data, doc.data), file=shown, positions=positions,
                    value_positions=value_positions, text=doc.text)
