#!/usr/bin/env python3
"""Summarize bench/sharding results.tsv: medians and spread per case.

usage: summarize.py results.tsv AVG_FANOUT_ROWS
"""
import csv
import statistics
import sys
from collections import defaultdict

path = sys.argv[1]
fanout_rows = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0

cases = defaultdict(list)
order = []
with open(path) as f:
    for r in csv.DictReader(f, delimiter="\t"):
        key = (r["op"], int(r["clients"]), r["variant"])
        if key not in cases:
            order.append(key)
        cases[key].append(r)


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def med(rows, field):
    vals = [v for v in (num(r[field]) for r in rows) if v is not None]
    return statistics.median(vals) if vals else None


def spread(rows, field):
    vals = [v for v in (num(r[field]) for r in rows) if v is not None]
    if not vals:
        return ""
    return f"{min(vals):.0f}-{max(vals):.0f}" if max(vals) >= 100 else f"{min(vals):.1f}-{max(vals):.1f}"


def fmt(v, nd=1):
    return "NA" if v is None else f"{v:.{nd}f}"


variant_rank = {"A": 0, "A_generic": 1, "A_any": 2, "B": 3, "B_pipe": 4}
order.sort(key=lambda k: (k[0] != "list", k[1], variant_rank.get(k[2], 9), k[2]))

hdr = ("op", "clients", "variant", "runs", "tps median", "tps min-max", "vs B", "avg ms", "p50 ms", "p99 ms",
       "p99 min-max", "rows/s", "WAL KiB/tx", "load1 max", "failed")
lines = []
for key in order:
    op, clients, variant = key
    rows = cases[key]
    tps = med(rows, "tps")
    base = med(cases.get((op, clients, "B"), []), "tps")
    vs_b = f"{tps / base:.2f}x" if tps and base else ""
    rows_s = f"{tps * fanout_rows:.0f}" if op == "fanout" and tps else ""
    failed = sum(int(num(r["failed"]) or 0) for r in rows)
    loads = [v for v in (num(r.get("load1")) for r in rows) if v is not None]
    lines.append((op, str(clients), variant, str(len(rows)), fmt(tps, 0 if (tps or 0) >= 100 else 1),
                  spread(rows, "tps"), vs_b, fmt(med(rows, "lat_avg_ms"), 3), fmt(med(rows, "p50_ms"), 3),
                  fmt(med(rows, "p99_ms"), 3), spread(rows, "p99_ms"), rows_s,
                  fmt(med(rows, "wal_kb_per_tx"), 1) if "wal_kb_per_tx" in rows[0] else "NA",
                  fmt(max(loads), 1) if loads else "NA", str(failed)))

widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(hdr)]
print()
print(f"== summary (medians over runs; fan-out batch = {fanout_rows:g} rows on average)")
print(" | ".join(h.ljust(w) for h, w in zip(hdr, widths)))
print("-+-".join("-" * w for w in widths))
for l in lines:
    print(" | ".join(c.ljust(w) for c, w in zip(l, widths)))
