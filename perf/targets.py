"""The end of every perf/bench_*.py that checks targets within its run:
print each target with its value and whether it is met, write the JSON that
perf/harness.py collects, and give the exit status (1 when one is missed)."""

import json


def report(checks: list[dict], title: str, json_path: str | None, payload: dict,
           width: int = 58) -> int:
    """Prints ``checks`` ({target, value, need, met}) under ``title``; writes
    ``payload`` plus the checks to ``json_path`` (if given). Returns 0 when
    every target is met, else 1."""
    print(f"\n{title}:")
    for t in checks:
        print(f"  {t['target']:{width}} {t['value']:>10,.2f}  need {t['need']:8}  "
              f"{'met' if t['met'] else 'NOT MET'}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({**payload, "targets": checks}, f, indent=2)
    return 0 if all(t["met"] for t in checks) else 1
