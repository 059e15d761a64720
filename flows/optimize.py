"""Command-line entry point: ``python -m flows.optimize --plan PLAN --data DATA [--dry-run | --demo]``.

Kept free of heavy imports so that ``--help`` and bad input answer at once; the Prefect
flow itself lives in ``flows.fod_flow``.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Parse options, validate, then dry-run or run the flow (see ``flows.cli``)."""
    from flows.cli import run_cli

    return run_cli(argv)


if __name__ == "__main__":
    raise SystemExit(main())
