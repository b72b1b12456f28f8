"""Back-sync: changes made in Dotdigital (opt-outs) written back to commercetools."""
