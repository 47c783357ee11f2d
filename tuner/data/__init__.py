"""The embedded dataset, its base checkpoint, checks of a user's dataset, and tuner's cache."""
