"""`python -m tinylib.finetune`: the fine-tuning stage from the command line (`--help` lists the flags)."""

from tinylib.finetune.stage import main

main()
