"""The ``gauntlet`` command: one entry point gathering each package's subcommands."""
