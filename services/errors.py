"""The kbatch exception tree: the class says whether an error is retryable."""

from __future__ import annotations


class KbatchError(Exception):
    """Root of every kbatch error."""

    retryable = False


class ConfigurationError(KbatchError):
    """Settings or deployment files are wrong; nothing will work until fixed."""


class KafkaUnavailableError(KbatchError):
    """The broker did not answer in time."""

    retryable = True


class DeliveryError(KbatchError):
    """The broker refused or failed to acknowledge a produced record."""

    retryable = True


class DecodeError(KbatchError):
    """A record's bytes do not decode with any known schema."""


class TopicMismatchError(KbatchError):
    """An existing topic differs from the catalog (partition count)."""


class EngineError(KbatchError):
    """Base of inference-engine failures."""


class TransientEngineError(EngineError):
    """The request may succeed if tried again (timeout, engine restart)."""

    retryable = True

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # the server's own Retry-After, when it gave one


class EngineOutOfMemoryError(TransientEngineError):
    """The accelerator ran out of memory; retry at a smaller concurrency."""


class InvalidRequestError(EngineError):
    """The request itself can never succeed (bad parameters, prompt too long)."""


class ModelNotServedError(InvalidRequestError):
    """The request asks for a model this worker does not serve; answering with another
    model would be a lie."""


class EngineDeadError(EngineError):
    """The engine cannot serve anything any more; the worker must exit."""


class FencedError(KbatchError):
    """Another owner has taken this partition's transactional id."""


class ProducerFatalError(KbatchError):
    """A transactional producer hit a fatal error: it must be replaced, its work redone."""
