"""Fine-tuning: a second stage after pretraining, on instruction examples, with the loss on the response only.

Read in this order: `instruct` (TinyStories-Instruct: find, download, parse into prompt/story pairs; offline,
a labelled set derived from plain stories; the request prompt), `batches` (windows whose targets are the story
only: padded, packed or a stream), `stage` (the stage itself: from a pretrained checkpoint through the
trainer's loop, word inclusion and loss on responses before and after). `python -m tinylib.finetune` runs it.
The room imports the core; only the notebook widgets and exercises import it.
"""
