"""Sub-commands of the ``flowalign`` CLI; each module exposes ``add_parser(subparsers)``."""
