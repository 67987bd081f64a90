"""Example applications using livesync (run from a source checkout; not part of the installed package)."""
