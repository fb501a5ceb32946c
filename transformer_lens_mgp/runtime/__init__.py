"""How a model is run for the heavy work: answer-only logits, the masked KL over a dataset,
weights frozen and laid out for the forward pass, blocks recomputed in the backward pass.
Each context manager here puts the model back as it found it, however the block ends."""
