"""tinylib: train, run and look inside small language models on TinyStories.

Import the module you need (`from tinylib.model import Transformer`); this package file stays light so that
`import tinylib` never pulls in transformers or TransformerLens.
"""

__version__ = "0.1.0"
