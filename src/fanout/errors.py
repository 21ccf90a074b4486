"""The root of fanout's own errors, so a caller can catch them as one.

Each error is defined beside the code that raises it and derives from ``FanoutError``
(those that are also a ``ValueError``, such as a refused publish option, stay one too):
``config.ConfigError`` (a setting is wrong: one line naming it, exit 2),
``config.Unreachable`` (a service cannot be reached), ``queue.messages.PoisonMessage``,
``queue.sqs.QueueError``, ``stages.leases.LeaseKept`` and ``LeaseLost``, the publish refusals in
``stages.publish``, ``providers.transport.TransportError`` and the HTTP/2 client's errors.
"""


class FanoutError(Exception):
    """Raised by fanout itself, not passed through from a library it uses."""
