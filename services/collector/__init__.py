"""Results collector: results topic and DLQ -> OpenAI batch output and error files."""
