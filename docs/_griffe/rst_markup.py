"""Griffe extension: the reStructuredText bits of xcloud's docstrings, as Markdown.

xcloud's docstrings are numpydoc, written for Sphinx. mkdocstrings renders their text as
Markdown, so once the package is loaded this extension rewrites, in every docstring:

- **Sphinx roles** (``:func:`xcloud.predict```, ``:class:`~xcloud.errors.XcloudWarning```,
  ``:meth:`to_dict```) into mkdocs-autorefs cross-references
  (``[`predict`][xcloud.engine.predict.predict]``). Names are resolved as Python would in the
  docstring's scope: the object, then its parents, then absolute ``xcloud.`` paths, then
  ``.relative`` ones.
- **Simple tables** (``=====  =====`` borders) into Markdown tables.
- **Literal-block markers**: ``text::`` before an indented block becomes ``text:`` (the
  indented block is a code block in Markdown too).
- **Grouped parameters without a type** (``device, runtime`` in a numpydoc ``Parameters``
  section) into one entry per name with the shared description: griffe gives every name of a
  group the annotation and default of the first one, so the table showed wrong types.

A reference to an xcloud object that no page renders makes autorefs warn, so
``mkdocs build --strict`` fails on it. A role whose name cannot be resolved at all is logged as a
warning (the build fails too) unless it names an object of another package listed in
``external`` (rendered as code, not linked: there is no network to fetch other inventories) or a
private name (``_helper``), which the reference does not render.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

import griffe

_LOG = logging.getLogger("mkdocs.plugins.xcloud_rst_markup")
_ROLE = re.compile(r":(?:py:)?(?P<role>func|class|mod|data|attr|meth|exc|obj|const):"
                   r"`(?P<tilde>~)?(?P<target>[^`<>]+)`")
_BORDER = re.compile(r"^(?P<indent> *)=+( +=+)+ *$")
_LITERAL = re.compile(r"(?<=\S)::(?=\n\n)|^ *::\n(?=\n)", re.MULTILINE)


class RstMarkup(griffe.Extension):
    """Rewrite roles, simple tables and ``::`` in the docstrings of ``package``."""

    def __init__(self, package: str = "xcloud", external: Sequence[str] = ()) -> None:
        super().__init__()
        self.package = package
        self.external = tuple(external)

    def on_package(self, *, pkg: griffe.Module, loader: Any, **kwargs: Any) -> None:
        if pkg.path != self.package:
            return
        for obj in _objects(pkg):
            if obj.docstring is None:
                continue
            text = split_grouped_parameters(simple_tables_to_markdown(obj.docstring.value))
            text = _LITERAL.sub(lambda match: ":" if match[0] == "::" else "", text)
            obj.docstring.value = _ROLE.sub(
                lambda match, obj=obj: self._link(obj, pkg, match), text)

    def _link(self, obj: griffe.Object, pkg: griffe.Module, match: re.Match[str]) -> str:
        target = match["target"].strip()
        shown = target.lstrip(".").rsplit(".", 1)[-1] if match["tilde"] else target
        path = _resolve(obj, pkg, target)
        if path is not None and path.split(".")[0] == self.package:
            return f"[`{shown}`][{path}]"
        if path is not None or target.startswith(self.external):
            return f"`{shown}`"
        if any(part.startswith("_") and not part.startswith("__") for part in target.split(".")):
            return f"`{shown}`"  # private helpers are not rendered in the reference
        _LOG.warning("%s: cannot resolve %s in the docstring of %s", obj.relative_filepath,
                     match[0], obj.path)
        return f"`{shown}`"


# -- simple tables ----------------------------------------------------------------------------


def simple_tables_to_markdown(text: str) -> str:
    """Replace every reStructuredText simple table in ``text`` by a Markdown table."""
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        table = _simple_table(lines, index)
        if table is None:
            out.append(lines[index])
            index += 1
            continue
        end, markdown = table
        out.extend(markdown)
        index = end
    return "\n".join(out)


def _simple_table(lines: list[str], start: int) -> tuple[int, list[str]] | None:
    """(index after the table, Markdown lines) for a table whose top border is ``start``."""
    match = _BORDER.match(lines[start])
    if match is None:
        return None
    columns = [(m.start(), m.end()) for m in re.finditer(r"=+", lines[start])]
    borders = [start]
    index = start + 1
    while index < len(lines) and len(borders) < 3:
        if _BORDER.match(lines[index]) and _columns(lines[index]) == columns:
            borders.append(index)
            if index + 1 >= len(lines) or not lines[index + 1].strip():
                break  # a border followed by a blank line (or the end) closes the table
        elif not lines[index].strip() and len(borders) == 1:
            return None  # a blank line before any row: not a table
        index += 1
    if len(borders) < 2:
        return None
    if len(borders) == 2:
        header: list[str] = [""] * len(columns)
        body = _rows(lines[borders[0] + 1:borders[1]], columns)
    else:
        heads = _rows(lines[borders[0] + 1:borders[1]], columns)
        header = [" ".join(cell for cell in cells if cell) for cells in zip(*heads, strict=True)]
        body = _rows(lines[borders[1] + 1:borders[2]], columns)
    indent = match["indent"]
    markdown = [_markdown_row(header, indent), indent + "|" + "---|" * len(columns)]
    markdown += [_markdown_row(row, indent) for row in body]
    return borders[-1] + 1, markdown


def _columns(line: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"=+", line)]


def _rows(lines: list[str], columns: list[tuple[int, int]]) -> list[list[str]]:
    """Cells of each row; a line whose first column is blank continues the row above."""
    rows: list[list[str]] = []
    starts = [start for start, _ in columns]
    for line in lines:
        if not line.strip():
            continue
        cells = [line[begin:end].strip() for begin, end in
                 zip(starts, [*starts[1:], len(line) + 1], strict=True)]
        if cells[0] or not rows:
            rows.append(cells)
        else:
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells, strict=True)]
    return rows


def _markdown_row(cells: list[str], indent: str) -> str:
    return indent + "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


# -- grouped parameters ----------------------------------------------------------------------

_SECTION = re.compile(r"^(?P<indent> *)(Parameters|Other Parameters)\n(?P=indent)-{3,}$",
                      re.MULTILINE)


def split_grouped_parameters(text: str) -> str:
    """``a, b`` (no ``: type``) in a numpydoc Parameters section -> an entry per name."""
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        out.append(lines[index])
        header = "\n".join(lines[index:index + 2])
        match = _SECTION.match(header)
        index += 1
        if match is None:
            continue
        out.append(lines[index])  # the dashes
        index += 1
        indent = match["indent"]
        while index < len(lines) and (lines[index].strip() or _continues(lines, index, indent)):
            line = lines[index]
            body_end = index + 1
            while body_end < len(lines) and (not lines[body_end].strip() and
                                             _continues(lines, body_end, indent)
                                             or lines[body_end].startswith(indent + " ")):
                body_end += 1
            names = line.strip()
            grouped = (line.startswith(indent) and not line.startswith(indent + " ")
                       and ", " in names and " : " not in names and ":" not in names)
            if grouped:
                for name in names.split(", "):
                    out.extend([indent + name, *lines[index + 1:body_end]])
            else:
                out.extend(lines[index:body_end])
            index = body_end
    return "\n".join(out)


def _continues(lines: list[str], index: int, indent: str) -> bool:
    """Whether the blank line at ``index`` is inside a section item (more text follows)."""
    following = next((line for line in lines[index + 1:] if line.strip()), None)
    return following is not None and following.startswith(indent + " ")


# -- cross-references -------------------------------------------------------------------------


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


def _lookup(pkg: griffe.Module, path: str) -> griffe.Object | griffe.Alias | None:
    parts = path.split(".")
    if parts[0] != pkg.name:
        return None
    try:
        return pkg[".".join(parts[1:])] if len(parts) > 1 else pkg
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _canonical(found: griffe.Object | griffe.Alias) -> str:
    try:
        target = found.final_target if found.is_alias else found
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return found.target_path
    # a module-level alias such as ``list = list_models``: link to the function it names
    if target.is_attribute and isinstance(target.value, griffe.ExprName):
        return target.value.canonical_path
    # ``from .predict import predict`` in a package: at run time the function hides the
    # submodule of the same name (``xcloud.predict`` is the function), griffe keeps the module
    if target.is_module and target.name in target.members:
        member = target.members[target.name]
        if not member.is_module:
            return _canonical(member)
    return target.path


def _resolve(obj: griffe.Object, pkg: griffe.Module, target: str) -> str | None:
    """Canonical path of ``target`` seen from ``obj``'s docstring, or None."""
    if target.startswith("."):
        module = obj.module
        level = len(target) - len(target.lstrip("."))
        base = module if module.is_package else module.parent
        for _ in range(level - 1):
            base = base.parent if base is not None else None
        if base is None:
            return None
        found = _lookup(pkg, f"{base.path}.{target.lstrip('.')}")
        return None if found is None else _canonical(found)
    found = _lookup(pkg, target)
    if found is not None:
        return _canonical(found)
    head, _, rest = target.partition(".")
    try:
        resolved = obj.resolve(head)
    except griffe.NameResolutionError:
        return None
    path = f"{resolved}.{rest}" if rest else resolved
    found = _lookup(pkg, path)
    if found is not None:
        return _canonical(found)
    return path if path.split(".")[0] != pkg.name else None
