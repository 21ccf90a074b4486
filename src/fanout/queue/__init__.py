"""Transport between the stages: the wire format of queue messages and the SQS operations."""
