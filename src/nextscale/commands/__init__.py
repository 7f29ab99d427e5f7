"""Subcommands of the `nextscale` command line (see `nextscale.cli`)."""
