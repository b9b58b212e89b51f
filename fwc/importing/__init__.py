"""`fwc import iptables-save`: an existing ruleset as an fwc policy, and the proof that
the compiled policy does the same (docs/migration.md)."""
