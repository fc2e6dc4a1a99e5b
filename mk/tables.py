#!/usr/bin/env python3
"""Checks that each SQLite table has one owning file: the only file whose SQL reads or writes it.

Tables are found in the components' migrations (CREATE TABLE ...); a file uses a table when its
SQL names it after FROM, INTO, UPDATE or JOIN. A table used by more than one file fails the check,
except for the read-only uses listed in READS_ALLOWED (each with its reason). Usage:
tables.py COMPONENT... (e.g. sdk relay).
"""
import glob
import os
import re
import sys

# (file, table): why that file may read (never write) another file's table
READS_ALLOWED = {
    ("sdk/client.c", "local_device"): "the key check counts sealed rows to tell a new database from a tampered one",
    ("sdk/client.c", "identities"): "the key check counts sealed rows",
    ("sdk/client.c", "sessions"): "the key check counts sealed rows",
    ("sdk/client.c", "history"): "the key check counts sealed rows",
    ("sdk/held.c", "pending_identities"): "one join finds the held envelopes whose sender is decided",
    ("sdk/stores.c", "rooms"): "the schema (creation, its row-digest triggers) and the row digest read every tracked row",
}

WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE)\b", re.I)


def main():
    failed = False
    for comp in sys.argv[1:]:
        files = sorted(glob.glob(os.path.join(comp, "*.c")))
        text = {f: open(f, encoding="utf-8").read() for f in files}
        tables = sorted({m.group(1) for t in text.values()
                         for m in re.finditer(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", t)})
        owners = {}
        for table in tables:
            use = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+" + table + r"\b")
            users = [f for f in files if use.search(text[f])]
            strict = [f for f in users if (f, table) not in READS_ALLOWED]
            for f in users:
                if (f, table) in READS_ALLOWED:
                    # an allowed reader must not write the table
                    for stmt in re.findall(r'"[^"]*\b' + table + r'\b[^"]*"', text[f]):
                        if WRITE.search(stmt):
                            print(f"tables: {f} writes {table}, owned elsewhere: {stmt}")
                            failed = True
            if len(strict) > 1:
                print(f"tables: {comp}: {table} is used by {len(strict)} files: {' '.join(strict)}")
                failed = True
            owners[table] = strict[0] if strict else "(none)"
        print(f"tables: {comp}: " + ", ".join(f"{t} -> {os.path.basename(o)}" for t, o in owners.items()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
