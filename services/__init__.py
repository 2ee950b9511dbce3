"""kbatch: batch LLM inference as message-driven services over Apache Kafka."""

__version__ = "0.1.0"
