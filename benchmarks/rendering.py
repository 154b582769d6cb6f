"""What every section of benchmarks/RESULTS.md is made of: the machine line and the target tables' rows."""

from __future__ import annotations


def machine_line(m: dict) -> str:
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, Python {m['python']}; "
        f"GPU: {m['gpu']}."
    )


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def table_row(target: str, measured: str, ok: bool) -> str:
    return f"| {target} | {measured} | {verdict(ok)} |"
