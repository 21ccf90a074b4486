"""Outcome webhooks (issue #24): signing, the address checks, the payloads and the sender.

The rows (endpoints, the outbox of deliveries) are ``store.webhooks``'.
"""
