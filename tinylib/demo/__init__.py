"""`make demo`: TinyStories text -> token files -> a model planned for this machine -> stories, in 10 minutes.

Read in this order: `plan` (the candidate shapes, their step times measured here, and the choice of the one
that spends the minutes best), `__main__` (the command: data, plan, training, before/after figures, stories).
The room imports the core only.
"""
