"""Document -> validated Study and its cells, with every error placed at a line and column.

pydantic reports a location like ('model', 'mlp', 'width'); the union tag ('mlp') is not in the file,
so locations are walked against the data to find the node a user wrote.
"""

from __future__ import annotations

import importlib.util
import json
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from inflang.code import CodeNotFound, missing_extra
from inflang.code import locate as locate_code
from inflang.compiling.claim_checks import claim_problems
from inflang.compiling.hashing import canonical_hash, derive_seed
from inflang.compiling.reader import Document, PathKey, load
from inflang.compiling.sweep import Params, SweepEntry, apply, expand, split_path
from inflang.errors import CodeProblem, Problem, StudyError, did_you_mean
from inflang.spec import CustomDataset, CustomEstimator, CustomModel, FileDataset, Study, semantic_problems
from inflang.spec.dataset import ImageFolderDataset, expected_files, scan_folder


@dataclass(frozen=True)
class Cell:
    """One point of the sweep times one repeat: a fully validated study with no sweep left."""

    cell_id: str
    repeat: int
    seed: int
    params: Params
    study: Study


@dataclass
class LoadedStudy:
    """A study file loaded, validated and expanded into cells."""

    path: str
    document: Document
    study: Study
    cells: list[Cell] = field(default_factory=list)

    @property
    def spec_yaml(self) -> str:
        return self.document.text

    @property
    def spec_hash(self) -> str:
        return canonical_hash(self.document.data)


# --- pydantic errors -> positioned problems ---------------------------------------------------------

def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation can hold (Optional, unions and Annotated unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    return [annotation]


def _tag_of(model: type[BaseModel]) -> set[str]:
    tags: set[str] = set()
    for name in ("name", "arch", "protocol"):
        info = model.model_fields.get(name)
        if info is not None and typing.get_origin(info.annotation) is typing.Literal:
            tags.update(str(a) for a in typing.get_args(info.annotation))
    return tags


def _models_at(loc: tuple[Any, ...]) -> list[type[BaseModel]]:
    """The spec model classes (every union member) that a pydantic location points into."""
    candidates: list[Any] = [Study]
    for part in loc:
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if isinstance(part, str) and models and any(part in _tag_of(m) for m in models):
            candidates = [m for m in models if part in _tag_of(m)]
            continue
        nxt: list[Any] = []
        for c in candidates:
            if isinstance(c, type) and issubclass(c, BaseModel) and part in c.model_fields:
                nxt.extend(_unwrap(c.model_fields[part].annotation))
            elif typing.get_origin(c) in (list, tuple) and isinstance(part, int):
                nxt.extend(_unwrap(typing.get_args(c)[0]))
        if not nxt:
            return []
        candidates = nxt
    found: list[type[BaseModel]] = []
    for c in candidates:
        for inner in [c, *typing.get_args(c)]:
            found += [t for t in _unwrap(inner) if isinstance(t, type) and issubclass(t, BaseModel)]
    return found


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    models = _models_at(loc)
    return models[0] if models else None


def _tags_at(loc: tuple[Any, ...], key: str) -> list[str]:
    """The values a discriminator ``key`` may take at ``loc`` (from the union members' Literal types)."""
    found: list[str] = []
    for model in _models_at(loc):
        if key in model.model_fields:
            found += [str(a) for a in typing.get_args(model.model_fields[key].annotation)]
    return sorted(set(found), key=found.index)


def _data_path(data: Any, loc: tuple[Any, ...], keep_last: bool) -> PathKey:
    """Keep the parts of a pydantic location that exist in the data (drops union tags)."""
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        exists = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node))
        if exists:
            out.append(part)
            node = node[part]
        elif keep_last and i == len(loc) - 1:
            out.append(part)
    return tuple(out)


def _quoted(text: str) -> list[str]:
    return re.findall(r"'([^']*)'", text)


def _problem(doc_data: dict[str, Any], error: Any, locate: Any) -> Problem:
    kind = error["type"]
    loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    given = error.get("input")
    hint: str | None = None
    if kind == "extra_forbidden":
        path = _data_path(doc_data, loc, keep_last=True)
        key = loc[-1]
        model = _model_at(loc[:-1])
        allowed = sorted(model.model_fields) if model else []
        message = f"unknown key '{key}'"
        hint = did_you_mean(str(key), allowed) or (f"allowed keys: {', '.join(allowed)}" if allowed else None)
        return Problem(locate(path, False), _dotted(path), message, hint)
    if kind == "missing":
        path = _data_path(doc_data, loc, keep_last=True)
        return Problem(locate(path[:-1], False), _dotted(path), "is required")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        disc = _quoted(str(ctx.get("discriminator", "")))
        disc_key = disc[0] if disc else "name"
        base = _data_path(doc_data, loc, keep_last=False)
        path = base + (disc_key,)
        tags = _quoted(str(ctx.get("expected_tags", ""))) or _tags_at(loc, disc_key)
        if kind == "union_tag_not_found":
            return Problem(locate(base, False), _dotted(path), f"is required (one of: {', '.join(tags)})")
        tag = ctx.get("tag")
        hint = did_you_mean(str(tag), tags)
        return Problem(locate(path, True), _dotted(path),
                       f"unknown {disc_key} '{tag}'; expected one of: {', '.join(tags)}", hint)
    path = _data_path(doc_data, loc, keep_last=False)
    message = str(error["msg"])
    if kind == "literal_error":
        options = _quoted(str(ctx.get("expected", "")))
        message = f"'{given}' is not one of: {', '.join(options)}"
        hint = did_you_mean(str(given), options)
    elif kind == "value_error":
        message = message.removeprefix("Value error, ")
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        message = f"must be a map of keys, got {type(given).__name__} {given!r}"
    return Problem(locate(path, True), _dotted(path), message, hint)


def _dotted(path: PathKey) -> str:
    return ".".join(str(p) for p in path)


Probe = Callable[[Study], Study]  # runs a study's own code to learn its sizes (runners.custom.probe)


def _validate(data: dict[str, Any], doc: Document, locate: Any, require_files: bool = True,
              probe: Probe | None = None) -> Study:
    try:
        study = _with_code(_with_data_files(Study.model_validate(data), doc, locate, require_files), doc, locate,
                           probe)
    except ValidationError as exc:
        problems: list[Problem] = []
        seen: set[str] = set()
        for error in exc.errors():
            problem = _problem(data, error, locate)
            if problem.path not in seen:  # int | float unions report once per member
                seen.add(problem.path)
                problems.append(problem)
        raise StudyError(problems) from None
    semantic = semantic_problems(study)
    if semantic:
        raise StudyError(Problem(locate(path, True), _dotted(path), msg, hint) for path, msg, hint in semantic)
    return study


def _cell_locator(doc: Document, entries: list[SweepEntry]) -> Any:
    """Positions for a cell: a path set by the sweep points at the sweep value that set it."""

    def locate(path: PathKey, value: bool) -> Any:
        for entry in entries:
            swept = split_path(entry.path)
            if tuple(path[: len(swept)]) == swept or (tuple(swept[: len(path)]) == tuple(path) and path):
                # a bad value points at the sweep value; a bad key at the sweep key that named it
                return doc.position(entry.source, value=True) if value else doc.position(entry.source[:-1])
        return doc.position(path, value)

    return locate


def _with_code(study: Study, doc: Document, locate: Any, probe: Probe | None) -> Study:
    """Point the study's own code (custom dataset, model, estimators) at the study file's folder, find each
    module's file (importing nothing), and with ``probe`` import and run it to learn its sizes."""
    folder = str(Path(doc.file).parent.resolve())
    found: list[tuple[PathKey, Any, str]] = []  # (path, spec, reference field)
    if isinstance(study.dataset, CustomDataset):
        found.append((("dataset",), study.dataset, "loader"))
    if isinstance(study.model, CustomModel):
        found.append((("model",), study.model, "factory"))
    found += [(("estimators", i), e, "scorer") for i, e in enumerate(study.estimators)
              if isinstance(e, CustomEstimator)]
    if not found:
        return study
    placed: dict[PathKey, Any] = {}
    for path, spec, field_name in found:
        where = folder if spec.folder is None else str((Path(doc.file).parent / spec.folder).resolve())
        spec = spec.model_copy(update={"folder": where})  # a relative folder: against the study file's
        reference = getattr(spec, field_name)
        try:
            locate_code(reference, spec.folder)
        except CodeNotFound as exc:
            raise StudyError.at(locate(path + (field_name,), True), _dotted(path + (field_name,)), str(exc),
                                "put the module beside the study file, or install it") from None
        missing = missing_extra(spec.folder, spec.code)
        if missing:
            raise StudyError.at(locate(path + ("code",), True), _dotted(path + ("code",)),
                                f"no file {missing[0]} in {spec.folder}", None)
        placed[path] = spec
    estimators = [placed.get(("estimators", i), e) for i, e in enumerate(study.estimators)]
    study = study.model_copy(update={"dataset": placed.get(("dataset",), study.dataset),
                                     "model": placed.get(("model",), study.model), "estimators": estimators})
    if probe is None:
        return study
    try:
        return probe(study)
    except CodeProblem as exc:
        raise StudyError.at(locate(exc.path, True), _dotted(exc.path), exc.message, exc.hint) from None


def _with_data_files(study: Study, doc: Document, locate: Any, require_files: bool = True) -> Study:
    """Resolve a file dataset's ``root`` against the study file's folder and check its files are there
    (unless ``require_files`` is False: ``inflang plan`` prices a study before its files are fetched); check
    that a generated dataset's package is installed."""
    made_by = study.dataset.made_by
    if made_by is not None and require_files and importlib.util.find_spec(made_by[0]) is None:
        name = study.dataset.name
        raise StudyError.at(locate(("dataset", "name"), True), "dataset.name", f"{name} is made by the "
                            f"{made_by[0]} package, which is not installed", made_by[1])
    if not isinstance(study.dataset, FileDataset | ImageFolderDataset):
        return study
    root = Path(study.dataset.root)
    if not root.is_absolute():
        root = (Path(doc.file).parent / root).resolve()
    where = locate(("dataset", "root"), True)
    if isinstance(study.dataset, ImageFolderDataset):
        layout = scan_folder(str(root))
        if len(layout.classes) < 2 or not layout.train:
            raise StudyError.at(where, "dataset.root", f"no class folders with images in {root}",
                                "expected ROOT/CLASS/IMAGE (or ROOT/train/CLASS/IMAGE and ROOT/val/CLASS/IMAGE), "
                                "with at least two classes")
    else:
        files, source = expected_files(study.dataset.name)
        missing = [f for f in files if not any((root / c).is_file() for c in (f, f + ".gz", Path(f).name))]
        if missing and not study.dataset.download and require_files:
            raise StudyError.at(where, "dataset.root",
                                f"{study.dataset.name} files not found in {root}: missing {', '.join(missing)}",
                                f"obtain them from {source}, or set download: true to fetch them")
    dataset = study.dataset.model_copy(update={"root": str(root)})
    return study.model_copy(update={"dataset": dataset})


def validate_document(doc: Document, require_files: bool = True, probe: Probe | None = None) -> LoadedStudy:
    """Validate every cell of the study's sweep (the file itself when it has none), times its repeats.

    Only cells have to be valid: the file without its sweep need not be a study of its own, so a sweep can
    switch between options that exclude each other (a union of `{solver: [newton]}` and `{decompose: [true]}`).
    A problem found in every cell is reported once, as the file's; one found in some cells names the first
    cell it was found in.
    """
    expanded = expand(doc)  # the sweep's own structure first; each cell is validated below
    cells: list[Cell] = []
    problems: list[Problem] = []
    found: dict[tuple[Any, str, str], tuple[Problem, str, int]] = {}  # key -> (problem, first cell, cells)
    valid: list[Study] = []
    for params, entries in expanded:
        try:
            data = apply(doc.data, params)
        except KeyError:
            entry = entries[0]
            for e in entries:
                try:
                    apply(doc.data, {e.path: e.value})
                except KeyError:
                    entry = e
                    break
            problems.append(Problem(doc.position(entry.source[:-1]), _dotted(entry.source[:-1]),
                                    f"'{entry.path}' does not name a field of the study"))
            continue
        try:
            cell_study = _validate(data, doc, _cell_locator(doc, entries), require_files, probe)
        except StudyError as exc:
            label = ", ".join(f"{k}={v!r}" for k, v in params.items())
            for p in exc.problems:
                key = (p.position, p.path, p.message)
                first = found.get(key)
                found[key] = (p, label, 1) if first is None else (first[0], first[1], first[2] + 1)
            continue
        valid.append(cell_study)
        cells.extend(_cell(cell_study, params, repeat) for repeat in range(cell_study.repeats))
    for p, label, count in found.values():
        everywhere = count == len(expanded) or not label
        problems.append(p if everywhere else Problem(p.position, p.path, f"{p.message} (in the sweep cell {label})",
                                                     p.hint))
    if problems:
        raise StudyError(problems)
    base_data = {k: v for k, v in doc.data.items() if k != "sweep"}
    try:  # the study as written, for its study-level fields; a sweep may be what makes it valid
        study = _validate(base_data, doc, lambda path, value: doc.position(path, value), require_files, probe)
    except StudyError:
        study = valid[0]
    wrong = claim_problems(study.claims, [(c.params, c.study) for c in cells])
    if wrong:
        raise StudyError(Problem(doc.position(path, True), _dotted(path), msg, hint) for path, msg, hint in wrong)
    return LoadedStudy(path=doc.file, document=doc, study=study, cells=cells)


def _cell(study: Study, params: dict[str, Any], repeat: int) -> Cell:
    """The cell of a sweep point's ``repeat``-th seed: its id and seed depend on the study's name, the point
    and the repeat only, so a seed added later is the cell a study declaring more repeats would have."""
    seed = derive_seed(study.seed, "repeat", repeat)
    cell_id = canonical_hash({"study": study.study, "params": params, "repeat": repeat}, 12)
    return Cell(cell_id=cell_id, repeat=repeat, seed=seed, params=params, study=study)


def point_key(params: dict[str, Any]) -> str:
    """A sweep point's key: its swept values as canonical JSON (as the cells table stores them)."""
    return json.dumps(params, sort_keys=True)


def with_repeats(loaded: LoadedStudy, repeats: dict[str, int]) -> LoadedStudy:
    """The study with more seeds at some sweep points (``point_key`` -> repeats in all; fewer than declared
    changes nothing): the cells ``inflang run --until-settled`` added, kept in the database."""
    by_point: dict[str, list[Cell]] = {}
    for cell in loaded.cells:
        by_point.setdefault(point_key(cell.params), []).append(cell)
    cells: list[Cell] = []
    for key, own in by_point.items():
        cells.extend(own)
        last = own[-1]
        cells.extend(_cell(last.study, last.params, r) for r in range(len(own), repeats.get(key, 0)))
    if len(cells) == len(loaded.cells):
        return loaded
    return LoadedStudy(path=loaded.path, document=loaded.document, study=loaded.study, cells=cells)


def load_study(path: str | Path, require_files: bool = True, probe: Probe | None = None) -> LoadedStudy:
    """Load, validate and expand a study file; raises StudyError with every problem placed. With
    ``require_files=False`` a file dataset's missing files are no error (for pricing; nothing can run). A study
    that names its own code has each module's file found; with ``probe`` (``inflang plan`` and ``run``), the
    code is imported and run once to learn its sizes, and what fails there is a problem at its place too."""
    return validate_document(load(path), require_files, probe)
