"""Extra `pab` subcommands, discovered at start-up: every module in this package that defines
`register(subparsers)` becomes part of the console script.

A command module looks like::

    def register(subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser("profile", help="...")
        parser.add_argument(...)
        parser.set_defaults(func=run)   # run(args) -> int | None, the exit status

Keep heavy imports (torch, ray) inside `run`, so `pab --help` and the other commands stay fast.
"""
