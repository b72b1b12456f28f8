"""Programs: Dotdigital automation programs started by ctdd-sync (abandoned cart, browse abandonment,
post-purchase, review request).

- ``scheduling``: called inside the ingest units of work when a cart, an order or a product view changes;
  it writes, restarts or cancels durable trigger timers (``program_trigger`` rows).
- ``processor``: claims due triggers, checks every safeguard again at the moment of sending, and starts the
  program (enrolments in batches within Dotdigital's hourly allowance, or a list join).
- ``ctdd.domain.programs``: the pure rules (safeguards, quiet hours, re-trigger windows).
"""
