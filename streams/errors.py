"""Errors of the Kafka side."""

from actors.core.errors import StreamrecError

__all__ = ["InvalidRecord", "KafkaSetupError", "BrokerUnavailable", "KafkaConnectError", "TopicMissing"]


class InvalidRecord(StreamrecError):
    """A record failed boundary validation; it is dead-lettered, never applied.

    ``reason`` is short and human-readable; ``field`` names the offending field
    where there is one.
    """

    def __init__(self, reason: str, field: str | None = None):
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


class KafkaSetupError(StreamrecError):
    """Kafka cannot be set up (missing Java/Maven, bad KAFKA_HOME, ...). The message says what to do."""


class BrokerUnavailable(StreamrecError):
    """No broker answered at the configured address."""


class KafkaConnectError(BrokerUnavailable):
    """A client could not connect to the configured Kafka; the message says why (address, TLS, SASL login)
    and which setting to change."""


class TopicMissing(StreamrecError):
    """A topic streamrec needs does not exist; the message names the command that creates it."""
