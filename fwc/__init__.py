"""fwc: a policy compiler for highly available Linux firewall clusters."""

__version__ = "0.1.0"
