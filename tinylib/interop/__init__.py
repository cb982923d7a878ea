"""Interop: other people's formats in and out. Hugging Face transformers (`hf`), llama2.c checkpoints
(`llama2c`) and their download from karpathy/tinyllamas (`tinyllamas`), SentencePiece tokenizers
(`sentencepiece`). The core never imports this package; it imports the core."""
