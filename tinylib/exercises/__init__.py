"""Exercises for the notebooks: the learner writes a function, `check` runs it against tinylib's reference.

A notebook imports `check` and `solution` from its own module (`from tinylib.exercises.nb04_generation import
check, solution`), so it loads only what its exercises need, and a cell reads

    def top_k_filter(logits, k):
        raise NotImplementedError  # your code

    top_k_filter = check("top_k_filter", top_k_filter)

`check` runs the learner's function on random cases and raises `CheckFailed` naming what differs; on success
it returns the function, so later cells use it. With TINYLIB_SOLUTIONS=1 (how the tests run the notebooks) an
unimplemented stub is replaced by the reference. `solution(name)` shows the reference's source in a
collapsible block; `header(name)` the title, difficulty, importance and time. See `tinylib.exercises.checks`
for the machinery, the `nbXX_*` modules for the exercises of each notebook, and `catalog` for all of them.
A shown solution is code written out (`Exercise.shown`), never a call into tinylib; the check still compares
with tinylib's own function. `assembly` holds notebook 12's end-to-end checks: the learner's pieces, put
together, against tinylib's logits, training steps and sampled ids, naming the first module that differs.
"""
