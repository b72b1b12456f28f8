"""Example plugins shipped with ctdd-sync for plugin authors to read and copy (not registered by default)."""
