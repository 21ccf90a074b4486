"""fanout: mass push notifications."""
