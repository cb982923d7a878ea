"""What only a notebook needs: ipywidgets panels (the story generator, the budget sliders), live plots, and
the choice of which model a notebook studies. Everything that imports ipywidgets or IPython lives here; the
core and the other rooms never import this package."""
