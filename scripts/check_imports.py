#!/usr/bin/env python3
"""Lists pairs of Rust files under rust/src that import each other (run by scripts/lint).

Every `crate::`, `super::` and `self::` path in a file (in `use` trees and
inline) is resolved to the file of the longest module prefix it names; an edge
A -> B is recorded for each. Prints every edge with --edges, then each mutual
pair; exits 1 if there is one."""

import re
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "rust/src")
files = {}
for f in root.rglob("*.rs"):
    rel = f.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts == ["lib"]:
        parts = []
    elif parts[-1] == "mod":
        parts = parts[:-1]
    files[tuple(parts)] = f


def module_of(path):
    """Longest prefix of `path` that is a file module."""
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in files:
            return tuple(path[:n])
    return ()


def expand(tree):
    """Expands a use tree `a::{b, c::{d}}` into flat paths."""
    tree = tree.strip()
    i = tree.find("{")
    if i < 0:
        return [re.sub(r"\s+as\s+\w+$", "", tree)]
    prefix, inner = tree[:i], tree[i + 1 : tree.rindex("}")]
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    items.append(cur)
    return [p for item in items if item.strip() for p in expand(prefix + item.strip())]


edges = set()
for mod, f in files.items():
    text = re.sub(r"//[^\n]*", "", f.read_text())
    is_dir_mod = f.name in ("mod.rs", "lib.rs")
    here = (
        list(mod) if is_dir_mod else list(mod[:-1])
    )  # the module `super`/`self` of children resolve from
    # Inline `mod name { ... }` blocks: `super`/`self` inside them start deeper.
    spans = []
    for m in re.finditer(r"\bmod\s+(\w+)\s*\{", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += text[i] == "{"
            depth -= text[i] == "}"
            i += 1
        spans.append((m.start(), i, m.group(1)))

    def inline(pos, spans=spans):
        return [n for a, b, n in sorted(spans) if a <= pos < b]

    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths += [(p, m.start()) for p in expand(m.group(1))]
    for m in re.finditer(r"\b(?:crate|super|self)(?:::\w+)+", text):
        if not re.match(r"\buse\b", text[text.rfind(";", 0, m.start()) + 1 : m.start()].strip()):
            paths.append((m.group(0), m.start()))
    for p, pos in paths:
        segs = [s.strip() for s in p.split("::") if s.strip()]
        if not segs:
            continue
        if segs[0] == "crate":
            target = segs[1:]
        elif segs[0] in ("super", "self"):
            # `self` in a file module is that module; `super` its parent.
            cur = list(mod) + inline(pos)
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    cur = cur[:-1]
                segs = segs[1:]
            target = cur + segs
        elif tuple(list(mod) + inline(pos) + segs[:1]) in files:
            target = list(mod) + inline(pos) + segs  # a child module, named relative
        else:
            continue
        dest = module_of(target)
        if dest != mod:
            edges.add((mod, dest))


def name(m):
    return str(files[m].relative_to(root))


if "--edges" in sys.argv:
    for a, b in sorted(edges):
        print(f"{name(a)} -> {name(b)}")
pairs = sorted({tuple(sorted((a, b))) for a, b in edges if (b, a) in edges})
for a, b in pairs:
    print(f"MUTUAL: {name(a)} <-> {name(b)}")
# Any longer cycle (A -> B -> C -> A) too.
graph = {}
for a, b in edges:
    graph.setdefault(a, set()).add(b)
state, cycles = {}, []


def visit(node, stack):
    state[node] = "open"
    for nxt in sorted(graph.get(node, ())):
        if state.get(nxt) == "open":
            cycles.append(stack[stack.index(nxt) :] + [nxt])
        elif nxt not in state:
            visit(nxt, stack + [nxt])
    state[node] = "done"


for node in sorted(files):
    if node not in state:
        visit(node, [node])
for c in cycles:
    print("CYCLE: " + " -> ".join(name(m) for m in c))
print(f"{len(files)} files, {len(edges)} edges, {len(pairs)} mutual pairs, {len(cycles)} cycles")
sys.exit(1 if pairs or cycles else 0)
