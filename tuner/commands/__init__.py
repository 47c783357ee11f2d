"""The commands: one module per `tuner` command, each mapping its settings onto the wings below."""
