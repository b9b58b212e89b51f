#!/bin/sh
# Hand-written stand-in for the compiled notify hook (ha-daemons.md 2.3).
exec 9>/run/fwc-notify.lock
flock 9
CT="conntrackd -C /etc/conntrackd/conntrackd.conf"
log() { logger -t fwc-notify "$*"; }
run() {
    if $CT "$@" >/dev/null 2>&1; then log "ok: conntrackd $*"; else log "FAILED: conntrackd $*"; fi
}
log "transition to $1"
case "$1" in
    primary) run -c; run -f; run -R; run -B ;;
    backup)  run -t; run -n ;;
    fault)   run -t ;;
esac
exit 0
