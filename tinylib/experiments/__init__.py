"""Experiments: named training runs in a YAML list (`experiments/*.yaml`), run one by one, resumed, compared.

Read in this order: `runner` (parse and check the list, run or resume a run under its lock, the command line),
`status` (what state a run folder is in, read from the folder alone), `results` (the table and the loss
curves against tokens, FLOPs and wall time). `python -m tinylib.experiments` (and `make list`, `run-next`,
`run-specific`, `run-all`) runs it. The room imports the core; only widgets and exercises import it.
"""
