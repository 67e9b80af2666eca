"""The `sesam` command line; each package (models, serving, ...) registers its own subcommands."""

__version__ = "0.1.0"
