"""``cryptboot check``: will this image boot this machine (issue 17)."""
