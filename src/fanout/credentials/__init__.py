"""Push credentials: checked when given (``validation``), sealed at rest (``sealing``), and
kept per app in PostgreSQL (``stored``, over ``store.apps``)."""
