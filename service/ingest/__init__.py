"""Ingest: the SyncContact core, the TrackEvent core and the event inbox (queued TrackEvents)."""
