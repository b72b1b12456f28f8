"""Programs: Dotdigital automation programs started by ctdd-sync (abandoned cart, browse abandonment,
post-purchase, review request).

- ``scheduling``: called inside the ingest units of work when a cart, an order or a product view changes;
  it writes, restarts or cancels durable trigger timers (``program_trigger`` rows).
- ``processor``: claims due triggers (``triggers``), reads every safeguard's facts again at the moment of
  sending (``facts``), decides and records (``decisions``), and starts the program: enrolments in batches within
  Dotdigital's hourly allowance (``enrolment``, ``budget``, ``outcomes``, ``leases``) or a list join
  (``list_join``); program names are resolved by ``directory``.
- ``ctdd.domain.programs``: the pure rules (safeguards, quiet hours, re-trigger windows).
"""
