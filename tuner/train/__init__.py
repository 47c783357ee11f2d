"""The train-best wing: the plan, the supervisor of restarts and step-downs, the run folder, checkpoints."""
