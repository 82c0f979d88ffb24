#!/usr/bin/env python3
"""Top-level modules of src/ that import each other (directly or through others): prints the
strongly connected components with more than one module."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else "src"
mods = {}
for dirpath, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs") or f in ("main.rs",):
            continue
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, root)
        top = rel.split(os.sep)[0].removesuffix(".rs")
        if top == "lib":
            continue
        text = open(path).read()
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests \{.*", "", text, flags=re.S)  # unit tests aside
        text = "\n".join(l for l in text.splitlines() if not l.strip().startswith("//"))
        deps = set(re.findall(r"crate::(\w+)", text))
        mods.setdefault(top, set()).update(d for d in deps if d != top)
# Tarjan
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
def strong(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in mods.get(v, ()):
        if w not in mods: continue
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        sccs.append(comp)
sys.setrecursionlimit(10000)
for v in mods:
    if v not in index: strong(v)
cycles = [c for c in sccs if len(c) > 1]
for c in cycles:
    print("cycle:", " <-> ".join(sorted(c)))
print(f"{len(mods)} modules, {len(cycles)} cycles")
