"""Reading manifest files with bounds, for `kuberl validate`, `kuberl render` and `kuberl run`.

A YAML file is code-like input: a few hundred bytes of nested aliases ("billion laughs")
expand to billions of nodes, and every later walk over the document (validation,
defaulting, rendering) pays for the expansion. kubectl refuses such files at once; so do we,
before anything walks them. Each document is checked first on the parser's event stream
(its written size and depth, before a Python object exists per node), then on its composed
node graph, where an alias is one shared node, so both checks are linear in the text:

* its text is at most 3 MiB (the API server's request limit: nothing bigger can be applied);
* its expanded node count (every alias counted as the copy it stands for) is at most
  100,000: a full RLJob is under 1,000 nodes, and the bound keeps the slowest later walk of a
  document well under a second;
* it nests at most 100 levels (our deepest schema is 12; Python recursion would fail near 1,000);
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
MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 100
# A document starts at a line "---" in column 0 (YAML 1.2 §9.1.2): inside any scalar such a
# line must be indented, so splitting the text there never cuts a document in two.
_DOCUMENT_START = re.compile(r"^---(?=[ \t\r\n]|$)", re.MULTILINE)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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
    size: dict[int, int] = {}
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
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_EXPANDED_NODES:
                return f"it expands to more than {MAX_EXPANDED_NODES:,} nodes (YAML aliases repeat what they refer to)"
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


def _load_document(text: str, where: str) -> Any:
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise ManifestFileError(f"{where}: the document is over {MAX_DOCUMENT_BYTES // 2**20} MiB, "
                                "the most the API server accepts; split it")
    try:
        problem = _event_problem(text)
    except yaml.YAMLError as e:
        raise ManifestFileError(f"{where}: not valid YAML: {e}") from None
    if problem:
        raise ManifestFileError(f"{where}: refused: {problem}")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problem = _graph_problem(node)
        if problem:
            raise ManifestFileError(f"{where}: refused: {problem}")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ManifestFileError(f"{where}: not valid YAML: {e}") from None
    except RecursionError:
        raise ManifestFileError(f"{where}: refused: it nests deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def load_documents(path: str | Path) -> list[Document]:
    """Every non-empty document of the file at ``path``, within the bounds above."""
    name = str(path)
    try:
        if Path(path).stat().st_size > MAX_FILE_BYTES:
            raise ManifestFileError(f"{name}: over {MAX_FILE_BYTES // 2**20} MiB; split it")
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestFileError(f"cannot read {name}: {e}") from None
    starts = [m.start() for m in _DOCUMENT_START.finditer(text)]
    bounds = ([0] if not starts or starts[0] != 0 else []) + starts + [len(text)]
    out = []
    for i, (start, end) in enumerate(zip(bounds, bounds[1:])):
        body = _load_document(text[start:end], f"{name} (document {i + 1})")
        if body is not None:
            out.append(Document(name, i + 1, body))
    return out
