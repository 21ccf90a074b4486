"""The pipeline's stages: publish an event, fan it out into batches, deliver each batch.

Plain functions over a database pool and the queues; they know nothing of the runtime
(worker or Lambda) that calls them, nor of the local demo services.
"""
