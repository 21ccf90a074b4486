"""Everything that runs fanout on one machine: the demo, an embedded PostgreSQL and SQS
endpoint, the counting push sink and the push service emulators.

Tests and the demo use it; the stages, runtimes and providers never import it.
"""
