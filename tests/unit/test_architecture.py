"""The shape of the ctdd package: rooms layered as pyproject.toml's import-linter contracts say, no import
circles between modules, and a pure domain."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


def _graph():
    return grimp.build_graph("ctdd", include_external_packages=False)


def test_import_contracts_are_kept():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    done = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circles_between_modules():
    graph = _graph()
    modules = {m for m in graph.modules if ".migrations" not in m}
    # every import counts, also those inside functions (they are how circles used to be dodged)
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in modules} for m in modules}
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_domain_imports_nothing_of_ours_outside_the_domain():
    graph = _graph()
    for module in graph.find_children("ctdd.domain") | {"ctdd.domain"}:
        for imported in graph.find_modules_directly_imported_by(module):
            assert imported.startswith("ctdd.domain"), f"{module} imports {imported}"


def test_delivery_handlers_are_listed_explicitly():
    from ctdd.delivery import handlers, outbox

    kinds = {outbox.CONTACT_UPSERT, outbox.INSIGHT_UPSERT, outbox.INSIGHT_DELETE, outbox.CONTACT_DELETE,
             outbox.CONTACT_REMOVE_FROM_LISTS}
    assert set(handlers.HANDLERS) == kinds
