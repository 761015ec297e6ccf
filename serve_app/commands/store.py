"""`pab store check [--store URL] [--quarantine]`: list the job store's bad records, optionally move them aside.

A bad record is a job's request or state file that cannot be read or parsed (the API shows such a job as absent or
`failed` with code `store_corrupt`), or a pixel file its request names (`input_reference.png`, `remix_source.png`)
that is missing or does not match its sha256 (the job fails with `store_corrupt` when it runs). `--quarantine` moves
each bad job's folder to `<root>/quarantine/<id>/`, out of every listing, for an operator to inspect or delete. Exit
status 1 while bad records remain, else 0.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any


def register(subparsers: Any) -> None:
    from serve_app.config import DEFAULT_STORE_URL

    parser = subparsers.add_parser("store", help="inspect the job store")
    commands = parser.add_subparsers(dest="store_command", required=True, metavar="STORE_COMMAND")
    check = commands.add_parser("check", help="list bad records (exit 1 if any remain); --quarantine moves them aside")
    check.add_argument("--store", default=DEFAULT_STORE_URL,
                       help=f"the store's directory or fsspec URL, as storage.url (default {DEFAULT_STORE_URL})")
    check.add_argument("--quarantine", action="store_true", help="move each bad job to <store>/quarantine/<id>/")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    store_logger = logging.getLogger("ray.serve")
    level = store_logger.level
    store_logger.setLevel(logging.ERROR)  # the store logs each bad file; the lines below say it all, once
    try:
        return _check(args.store, args.quarantine)
    finally:
        store_logger.setLevel(level)


def _check(url: str, quarantine: bool) -> int:
    from serve_app.store import JobStore

    store = JobStore(url)
    bad = store.check()
    remaining = 0
    for job_id in sorted({b.job_id for b in bad}):
        for record in (b for b in bad if b.job_id == job_id):
            print(f"{job_id}  {record.file}  {record.reason}")
        if not quarantine:
            remaining += 1
            continue
        try:
            print(f"{job_id}  moved to {store.quarantine(job_id)}")
        except (OSError, KeyError) as exc:
            remaining += 1
            print(f"{job_id}  could not be moved: {type(exc).__name__}: {exc}")
    jobs = len({b.job_id for b in bad})
    print(f"{store.url}: {jobs} bad job record(s), {jobs - remaining} quarantined, {remaining} remain")
    return 1 if remaining else 0
