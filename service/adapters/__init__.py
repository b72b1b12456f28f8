"""Middleware adapters: processes that receive commercetools subscription deliveries from a message
transport (SQS, Google Pub/Sub push) and forward them to the ctdd-sync gRPC API with TrackEventBatch.

An adapter acknowledges a delivery to its transport only after the service answered OK for it (durably
in the outbox). Retryable failures are left to the transport's redelivery; poison deliveries
(INVALID_ARGUMENT) go to a dead-letter destination.
"""
