"""Plugin hooks: the hook specifications (``spec``) and the typed facade the core calls (``manager``)."""
