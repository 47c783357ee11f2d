"""The probe wing: the Optuna study, its trial loop, space, pruners, selection, workers, storage and record."""
