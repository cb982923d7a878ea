"""What only a notebook needs: ipywidgets panels, live plots, the choice of which model a notebook studies.

Read in this order: `models` (which model a notebook uses, chosen by name), `story` (the story generator: a
model, a prompt, sampling settings, a story that streams in), `story_controls` and `story_runner` (its
steering and story-on-request rows, and the runner that streams), `budget` (plan sliders and plots for
`tinylib.budget`), `live` (a loss plot that redraws while training), `token_views` (hoverable HTML views
of a text's tokens: where each attention head looks, how strongly a neuron or feature fires; offline, no
CDN). Everything that imports ipywidgets or IPython lives here; the core and the other rooms never import this
package.
"""
