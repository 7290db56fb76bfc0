"""Command line: ``msutils synth | validate | run | book``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "parse_overrides"]

PROFILES = ("smoke", "quick", "paper")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are read as YAML scalars (``3`` -> int)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set expects key=value; got '{item}'")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Notebook parameter overrides from ``--set`` and ``--manifest``."""
    overrides = parse_overrides(args.set)
    if args.manifest:
        overrides["manifest"] = str(Path(args.manifest).resolve())
    return overrides


def _cmd_synth(args: argparse.Namespace) -> int:
    from msutils import synth

    manifest = synth.generate(args.preset, Path(args.out), seed=args.seed, n_jobs=args.jobs)
    print(manifest)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from msutils.data.cohort import validate_manifest

    problems = validate_manifest(Path(args.manifest))
    if problems:
        print(f"{args.manifest}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(f"{args.manifest}: OK")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from msutils.pipeline.runner import run_notebook

    overrides = _overrides(args)
    summary = run_notebook(
        args.notebook,
        profile=args.profile,
        folds=args.folds,
        overrides=overrides,
        backend=args.backend,
        scheduler=args.scheduler,
        n_workers=args.workers,
        out_dir=Path(args.out) if args.out else None,
    )
    print(summary)
    return 0


def _cmd_book(args: argparse.Namespace) -> int:
    from msutils.pipeline.book import build_book

    overrides = _overrides(args)
    index = build_book(
        profile=args.profile,
        out_dir=Path(args.out) if args.out else None,
        overrides=overrides,
        backend=args.backend,
        scheduler=args.scheduler,
        n_workers=args.workers,
    )
    print(index)
    return 0


def _add_fanout_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=PROFILES, default="quick")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a notebook parameter (repeatable)")
    p.add_argument("--manifest", help="cohort manifest CSV (default: the profile's synthetic cohort)")
    p.add_argument("--backend", choices=("local", "dask"), default="local")
    p.add_argument("--scheduler", help="dask scheduler address (default: a LocalCluster)")
    p.add_argument("--workers", type=int, default=2, help="parallel folds (local pool / LocalCluster)")
    p.add_argument("--out", help="output folder (default: ./results)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``msutils`` command."""
    parser = argparse.ArgumentParser(prog="msutils", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate a synthetic cohort (NIfTI + manifest)")
    p.add_argument("--preset", default="quick")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("validate", help="check a cohort manifest; non-zero exit on problems")
    p.add_argument("manifest")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", help="run one notebook per fold with papermill, then aggregate")
    p.add_argument("notebook", help="notebook name, e.g. 02_edss_regression")
    p.add_argument("--folds", nargs="+", default=None, help="folds to run (default: all of the profile)")
    _add_fanout_options(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("book", help="run every notebook, then build the HTML study report")
    _add_fanout_options(p)
    p.set_defaults(func=_cmd_book)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``msutils`` console script."""
    args = build_parser().parse_args(argv)
    from msutils.core.progress import LOG_FORMAT

    # the console shows msutils' own lines (progress included); other libraries only warnings
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format=LOG_FORMAT,
                        datefmt="%H:%M:%S")
    logging.getLogger("msutils").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
