"""What the benchmark commands (bench/run.py, bench/stream.py) parse alike."""
from __future__ import annotations

import click


def parse_ints(text: str | None, what: str, *, minimum: int = 1) -> list[int] | None:
    """'64, 200,1000' -> [64, 200, 1000] (None stays None); click.BadParameter naming the
    option `what` for anything else or a value under `minimum`."""
    if text is None:
        return None
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated integers", param_hint=what) from None
    if not vals or any(v < minimum for v in vals):
        want = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        raise click.BadParameter(f"{text!r}: expected {want}", param_hint=what)
    return vals
