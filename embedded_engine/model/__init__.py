"""The model: configuration, transformer, attention over the paged KV cache, weights, loading, tokenizer, peaks."""
