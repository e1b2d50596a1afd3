"""The tiny CPU policy: model, tokenizer and its training step."""
