"""One module per ``grunet`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
