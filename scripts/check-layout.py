#!/usr/bin/env python3
"""The house rules of the code's shape (issue 15), checked: no product function over 100
non-blank lines, and no two modules of a crate that import each other.

usage: scripts/check-layout.py [CRATES_DIR]   (default: crates; exit 1 on a finding)

Product code is everything under crates/*/src outside `#[cfg(test)]` modules; tests,
benches, examples and the test kit are exempt. Functions are found by their `fn` line and
measured to their closing brace (strings and comments are skipped); a module's imports
are its `crate::NAME` paths, NAME being a top-level module of the same crate.
"""
import os
import re
import sys

LIMIT = 100
FN = re.compile(r"\s*(pub(\([a-z]+\))?\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")


def product_lines(path):
    """The file's lines up to its first `#[cfg(test)]` item at the top level."""
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        if line.startswith("#[cfg(test)]"):
            return lines[:i]
    return lines


def code(line):
    """`line` without its string literals, character literals and comment."""
    line = re.sub(r'"([^"\\]|\\.)*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return line.split("//")[0]


def long_functions(src):
    found = []
    for root, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            lines = product_lines(path)
            for i, line in enumerate(lines):
                m = FN.match(line)
                if not m:
                    continue
                depth, started, j = 0, False, i
                while j < len(lines):
                    text = code(lines[j])
                    for c in text:
                        if c == "{":
                            depth, started = depth + 1, True
                        elif c == "}":
                            depth -= 1
                    if started and depth <= 0:
                        break
                    if not started and text.rstrip().endswith(";"):
                        break
                    j += 1
                n = sum(1 for k in range(i, min(j, len(lines) - 1) + 1) if lines[k].strip())
                if n > LIMIT:
                    found.append(f"{path}:{i + 1}: fn {m.group(5)} has {n} non-blank lines (limit {LIMIT})")
    return found


def cycles(src, crate):
    uses = {}
    for root, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            top = os.path.relpath(path, src)[:-3].split(os.sep)[0]
            if top in ("lib", "main"):
                continue
            text = "\n".join(code(l) for l in product_lines(path))
            uses.setdefault(top, set()).update(u for u in re.findall(r"crate::(\w+)", text) if u != top)
    return [
        f"{crate}: modules {a} and {b} import each other"
        for a in sorted(uses)
        for b in sorted(uses[a])
        if a < b and a in uses.get(b, ())
    ]


def main():
    crates = sys.argv[1] if len(sys.argv) > 1 else "crates"
    findings = []
    for crate in sorted(os.listdir(crates)):
        src = os.path.join(crates, crate, "src")
        if crate == "testkit" or not os.path.isdir(src):
            continue
        findings += long_functions(src) + cycles(src, crate)
    for f in findings:
        print(f)
    if findings:
        sys.exit(1)
    print("check-layout: no function over 100 lines, no modules that import each other")


main()
