# -*- coding: utf-8 -*-
# Filters for the fleet playbooks: the rollout plan (canary + batches) and the
# per-host summary table.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: release_plan
short_description: Split hosts into the canary and the rolling batches
description:
  - Returns a list of batches (lists of host names), the canary first.
  - The first I(canary) hosts (in inventory order) are the canary batch.
  - Each entry of I(batches) is a batch size, a number of hosts or a percentage of
    all the hosts (at least 1), taken from the hosts that remain; the last entry
    repeats until every host has a batch, as with the play keyword C(serial).
positional: canary, batches
options:
  _input:
    description: The host names, in order.
    type: list
    required: true
  canary:
    description: Number of canary hosts (0 for none).
    type: int
    required: true
  batches:
    description: Batch sizes, e.g. C(["25%", "100%"]).
    type: list
    required: true
"""


def _size(entry, total):
    text = str(entry).strip()
    if text.endswith("%"):
        pct = float(text[:-1])
        if pct <= 0:
            raise ValueError("release_batches entry %r: a percentage must be above 0" % entry)
        return max(1, int(total * pct / 100.0))
    n = int(text)
    if n < 1:
        raise ValueError("release_batches entry %r: a batch needs at least 1 host" % entry)
    return n


def release_plan(hosts, canary, batches):
    hosts = list(hosts)
    canary = int(canary)
    if canary < 0:
        raise ValueError("release_canary must be 0 or more, not %d" % canary)
    if isinstance(batches, bytes):
        batches = batches.decode()
    if isinstance(batches, str):
        # From `-e release_batches=25%,100%` (or "['25%', '100%']"): a string.
        batches = [b.strip().strip("'\"") for b in batches.strip().strip("[]").split(",")]
        batches = [b for b in batches if b]
    if not batches:
        raise ValueError("release_batches must be a non-empty list, e.g. ['25%', '100%'], not %r"
                         % (batches,))
    plan = []
    if canary:
        plan.append(hosts[:canary])
    rest = hosts[canary:]
    sizes = [_size(b, len(hosts)) for b in batches]
    i = 0
    while rest:
        n = sizes[min(i, len(sizes) - 1)]
        plan.append(rest[:n])
        rest = rest[n:]
        i += 1
    return plan


def release_table(rows, columns):
    """An aligned text table: rows are dicts, columns the keys in order."""
    cells = [[str(c).upper() for c in columns]]
    for row in rows:
        cells.append(["-" if row.get(c) in (None, "") else str(row.get(c)) for c in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return ["  ".join(r[i].ljust(widths[i]) for i in range(len(columns))).rstrip() for r in cells]


class FilterModule(object):
    def filters(self):
        return {"release_plan": release_plan, "release_table": release_table}
