"""The HTTP surface in OpenAI's shape: Files, Batches, batch results, models, errors."""
