"""Models: loading policy, reference and tokenizer for a run (`loading`), the tiny random models of each
architecture built locally for CPU runs and tests (`tiny`), SmolLM2's GGUF file converted once into an HF folder
(`gguf`), and the maintainer's tool that regenerates the bundled opener answers with it (`opener_answers`).

`gguf.missing_packages` is import-light (validation calls it); the rest imports torch/transformers inside functions.
May import the shared top level (`paths`, `cache_store`) and `data` (the toy corpus for the tiny tokenizers).
"""
