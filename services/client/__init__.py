"""User-facing commands: submit batches, follow them, fetch results."""
