#!/usr/bin/env python3
"""Fails when a workspace crate depends on one at its own level or above, in the order
docs/architecture.md documents, or when the VMM pulls in a daemon dependency.

Normal and build dependencies count; dev-dependencies (tests may drive any crate) do not.
"""
import json
import subprocess
import sys

# Bottom to top: a crate may depend only on crates of a lower level.
LEVELS = {
    "hyper-vmm-api": 0,
    "hyperd-api": 0,
    "hyperd-agent": 0,
    "hyper-vmm": 1,
    "hyperctl": 1,
    "hyperd": 2,
    "hyperd-fuzz-targets": 3,
}
# What the VMM must never link, directly or through another crate: the daemon's server,
# runtime, store and registry client.
VMM_FORBIDDEN = {"hyper", "tokio", "redb", "oci-client", "reqwest", "hyperd"}

meta = json.loads(
    subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--locked"])
)
members = {p["id"]: p for p in meta["packages"] if p["id"] in meta["workspace_members"]}
errors = []
for p in members.values():
    name = p["name"]
    if name not in LEVELS:
        errors.append(f"{name}: not in the documented crate order (scripts/check-crate-order.py)")
        continue
    for d in p["dependencies"]:
        if d["kind"] == "dev" or d["name"] not in LEVELS:
            continue
        if LEVELS[d["name"]] >= LEVELS[name]:
            errors.append(f"{name} (level {LEVELS[name]}) depends on {d['name']} (level {LEVELS[d['name']]})")

# Everything hyper-vmm links, through the resolved graph (normal and build edges only).
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
names = {p["id"]: p["name"] for p in meta["packages"]}
vmm = next(i for i, p in members.items() if p["name"] == "hyper-vmm")
seen, todo = set(), [vmm]
while todo:
    i = todo.pop()
    for dep in nodes[i]["deps"]:
        if all(k["kind"] == "dev" for k in dep["dep_kinds"]):
            continue
        if dep["pkg"] not in seen:
            seen.add(dep["pkg"])
            todo.append(dep["pkg"])
for bad in sorted({names[i] for i in seen} & VMM_FORBIDDEN):
    errors.append(f"hyper-vmm links {bad}, a daemon dependency")

for e in errors:
    print(f"crate order: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"crate order: {len(members)} crates, every dependency points down", file=sys.stderr)
