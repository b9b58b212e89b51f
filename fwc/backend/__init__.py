"""Back end: checked model -> per-node files on disk.

Lowers each member's policy to backend-neutral rulesets (`lower`), optimises them
(`arrange`, `ipsets`), renders every node file (`render`: iptables-restore, ipset,
keepalived, conntrackd, notify script, sysctl, systemd units), and writes them
atomically with their MANIFEST (`output`, `manifest`). Imports the model and the
foundation modules, never the front end's parser, the checks or the commands.
"""
