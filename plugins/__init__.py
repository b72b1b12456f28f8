"""Plugins bundled with ctdd-sync (``ctdd.plugins``): the default mapping, registered in code at start-up."""
