"""CLI subcommands: one module each, each exposing ``register(subparsers)``.

``register`` adds a subparser and sets ``func`` (``args -> exit code``) on it.
Modules are discovered automatically by :func:`sparsecc.cli.build_parser`.
"""
