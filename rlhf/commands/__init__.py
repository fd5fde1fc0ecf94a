"""CLI subcommands: each module has ``add_parser(subparsers)`` and sets ``func`` on its parser."""

COMMANDS = ["stage", "configs", "run", "study", "plan", "submit", "jobs", "serve", "report"]
