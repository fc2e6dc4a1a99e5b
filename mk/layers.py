#!/usr/bin/env python3
"""Checks that the files of each component call each other one way only (no circle).

For every object file of a component (build/obj/<component>/*.o) `nm` says which functions and
variables it defines and which it uses; file A depends on file B when A uses a symbol B defines.
A circle of such dependencies (a strongly connected component of more than one file) fails the
check. Usage: layers.py BUILD_DIR COMPONENT... ; prints each component's files in dependency order
(a file only uses files listed before it) or the circles found.
"""
import glob
import os
import subprocess
import sys


def symbols(obj):
    out = subprocess.run(["nm", "--defined-only", "-g", obj], capture_output=True, text=True, check=True).stdout
    defined = {l.split()[-1] for l in out.splitlines() if len(l.split()) >= 3}
    out = subprocess.run(["nm", "-u", obj], capture_output=True, text=True, check=True).stdout
    used = {l.split()[-1] for l in out.splitlines() if l.strip()}
    return defined, used


def sccs(nodes, edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    build, comps = sys.argv[1], sys.argv[2:]
    failed = False
    for comp in comps:
        # objects of sources that still exist (a removed file may leave its object behind)
        objs = sorted(o for o in glob.glob(os.path.join(build, "obj", comp, "*.o"))
                      if os.path.exists(os.path.join(comp, os.path.basename(o)[:-2] + ".c")))
        if not objs:
            print(f"layers: no objects under {build}/obj/{comp}: build first", file=sys.stderr)
            return 2
        names = {o: os.path.join(comp, os.path.basename(o)[:-2] + ".c") for o in objs}
        info = {names[o]: symbols(o) for o in objs}
        owner = {}
        for f, (defined, _) in info.items():
            for s in defined:
                owner[s] = f
        edges = {f: set() for f in info}
        why = {}
        for f, (_, used) in info.items():
            for s in used:
                g = owner.get(s)
                if g and g != f:
                    edges[f].add(g)
                    why.setdefault((f, g), []).append(s)
        circles = [c for c in sccs(info.keys(), edges) if len(c) > 1]
        if circles:
            failed = True
            for c in circles:
                print(f"layers: {comp}: circle through {len(c)} files:")
                for f in c:
                    for g in sorted(edges[f] & set(c)):
                        print(f"  {f} -> {g}: {', '.join(sorted(why[(f, g)])[:6])}")
        else:
            order = [c[0] for c in sccs(info.keys(), edges)]  # Tarjan emits dependencies first
            print(f"layers: {comp}: no circle; bottom to top: {' '.join(os.path.basename(f) for f in order)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
