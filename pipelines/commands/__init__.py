"""One module per `onegen` subcommand: `add_arguments(parser)` and `run(args) -> int`."""
