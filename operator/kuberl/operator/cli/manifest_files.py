"""Reading manifest files with bounds, for `kuberl validate`, `kuberl render` and `kuberl run`.

A YAML file is code-like input: a few hundred bytes of nested aliases ("billion laughs")
expand to billions of nodes, and every later walk over the document (validation,
defaulting, rendering) pays for the expansion. kubectl refuses such files at once; so do we,
before anything walks them. Each document is checked first on the parser's event stream
(its written size and depth, before a Python object exists per node), then on its composed
node graph, where an alias is one shared node, so both checks are linear in the text:

* its text is at most 3 MiB, and so is its expansion (every alias counted as the copy it
  stands for, as the JSON sent to the server would hold it): 3 MiB is the API server's request
  limit, so nothing bigger can be applied, and a few aliases of a long string are refused
  even when there are few nodes;
* its expanded node count is at most 50,000: a full RLJob is under 1,000 nodes, and the
  bound keeps the slowest accepted document (a valid one with a large free-form field, which
  is walked for defaults, structure, CEL and written out by `render`) under a second on two
  cores: 45,000 nodes took 0.13 s to validate and 0.85 s to render, 82,000 took 1.3 s to render;
* it nests at most 100 levels (our deepest schema is 10; Python recursion would fail near 1,000);
* no alias refers to a node that contains it (a cycle has no expansion at all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_DOCUMENT_BYTES = 3 * 1024 * 1024
MAX_FILE_BYTES = 64 * 1024 * 1024  # read at all: many documents, each within its own bound
MAX_EXPANDED_NODES = 50_000
MAX_DEPTH = 100
# A document starts at a line "---" in column 0 (YAML 1.2 §9.1.2): inside any scalar such a
# line must be indented, so splitting the text there never cuts a document in two.
_DOCUMENT_START = re.compile(r"^---(?=[ \t\r\n]|$)", re.MULTILINE)
# A message quotes the value it refuses: a 1 MiB name is shown by its start and its length.
MAX_MESSAGE_CHARS = 500
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def clip(line: str) -> str:
    """``line`` cut to MAX_MESSAGE_CHARS, saying how much was left out."""
    if len(line) <= MAX_MESSAGE_CHARS:
        return line
    return f"{line[:MAX_MESSAGE_CHARS]}... ({len(line) - MAX_MESSAGE_CHARS:,} more characters)"


class ManifestFileError(ValueError):
    """A file or document refused before it is used; the message names file and document."""


@dataclass(frozen=True)
class Document:
    file: str
    index: int  # 1-based, as people count documents in a file
    body: Any

    @property
    def where(self) -> str:
        return f"{self.file} (document {self.index})"


def _graph_problem(root: yaml.Node) -> str | None:
    """Why the composed graph is too big, too deep or cyclic; None when it is fine. Iterative,
    memoised by node: each distinct node is visited once however often aliases repeat it."""
    size: dict[int, int] = {}  # expanded nodes under a node, itself included
    weight: dict[int, int] = {}  # expanded characters: its scalars' text, one per node for punctuation
    depth: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        kids = _children(node)
        if children_done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            weight[key] = 1 + (len(node.value) if isinstance(node,
                                                             yaml.ScalarNode) else sum(weight[id(k)] for k in kids))
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_EXPANDED_NODES:
                return f"it expands to more than {MAX_EXPANDED_NODES:,} nodes (YAML aliases repeat what they refer to)"
            if weight[key] > MAX_DOCUMENT_BYTES:
                return (f"it expands to more than {MAX_DOCUMENT_BYTES // 2**20} MiB, the most the API server accepts "
                        "(YAML aliases repeat what they refer to)")
            if depth[key] > MAX_DEPTH:
                return f"it nests deeper than {MAX_DEPTH} levels"
            continue
        if key in size:
            continue
        if key in open_:
            return "an alias refers to a node that contains it"
        open_.add(key)
        if len(open_) > MAX_DEPTH:
            return f"it nests deeper than {MAX_DEPTH} levels"
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)
    return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _event_problem(text: str) -> str | None:
    """The written (unexpanded) size and depth, from the parser's event stream: composing a
    document builds a Python object per node, so a long flat list is refused before that."""
    loader = _Loader(text)
    nodes = depth = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent)):
                nodes += 1
                if nodes > MAX_EXPANDED_NODES:
                    return f"it has more than {MAX_EXPANDED_NODES:,} nodes"
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    return f"it nests deeper than {MAX_DEPTH} levels"
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    finally:
        loader.dispose()
    return None


def _yaml_problem(e: yaml.YAMLError, first_line: int) -> str:
    """One line, with the line and column in the file (the document is parsed on its own)."""
    if isinstance(e, yaml.MarkedYAMLError):
        if "maximum nesting depth" in str(e.problem):  # libyaml's own bound (1,000) met before ours
            return f"refused: it nests deeper than {MAX_DEPTH} levels"
        what = " ".join(p for p in (e.problem, f"({e.context})" if e.context else None) if p)
        mark = e.problem_mark or e.context_mark
        if mark is not None:
            what += f" at line {first_line + mark.line + 1}, column {mark.column + 1}"
    else:
        what = " ".join(str(e).split())
    return f"not valid YAML: {what}"


def _load_document(text: str, where: str, first_line: int = 0) -> Any:
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise ManifestFileError(f"{where}: the document is over {MAX_DOCUMENT_BYTES // 2**20} MiB, "
                                "the most the API server accepts; split it")
    loader = None
    try:
        problem = _event_problem(text)
        if problem:
            raise ManifestFileError(f"{where}: refused: {problem}")
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        problem = _graph_problem(node)
        if problem:
            raise ManifestFileError(f"{where}: refused: {problem}")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ManifestFileError(f"{where}: {_yaml_problem(e, first_line)}") from None
    except RecursionError:  # not expected within the bounds above; kept so no input gives a traceback
        raise ManifestFileError(f"{where}: refused: it nests deeper than {MAX_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()


def _is_preamble(text: str) -> bool:
    """Only comments, blank lines and directives (%YAML, %TAG): the head of the next document."""
    return all(not line.strip() or line.lstrip().startswith("#") or line.startswith("%") for line in text.splitlines())


def load_documents(path: str | Path) -> list[Document]:
    """Every non-empty document of the file at ``path``, within the bounds above. Documents
    are numbered from 1 as the file's "---" lines divide it, comments before the first one
    belonging to it."""
    name = str(path)
    try:
        if Path(path).stat().st_size > MAX_FILE_BYTES:
            raise ManifestFileError(f"{name}: over {MAX_FILE_BYTES // 2**20} MiB; split it")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestFileError(f"cannot read {name}: {e}") from None
    starts = [m.start() for m in _DOCUMENT_START.finditer(text)]
    if starts and (starts[0] == 0 or _is_preamble(text[:starts[0]])):
        starts[0] = 0
    else:
        starts.insert(0, 0)
    out = []
    line = 0
    for i, (start, end) in enumerate(zip(starts, starts[1:] + [len(text)])):
        body = _load_document(text[start:end], f"{name} (document {i + 1})", line)
        line += text.count("\n", start, end)
        if body is not None:
            out.append(Document(name, i + 1, body))
    return out
