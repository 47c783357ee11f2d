"""The read model of a study, and what is made of it: report.md, trials.csv, plots, dashboard notes."""
