"""Delivery: the outbox table, the dispatcher loop, one handler per message kind, bulk imports,
and the per-account rate budget."""
