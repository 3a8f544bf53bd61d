#!/usr/bin/env bash
# Creates (or updates) a RabbitMQ user for one BEDS role or client and gives it only the
# permissions that role needs on one vhost and queue tag. See wiki/security.md.
#
#   scripts/rabbitmq-permissions.sh [--vhost V] [--tag T] PROFILE USER PASSWORD_FILE
#
# PROFILE: appServer | admin | segundo | tercero  (a node of that role)
#          operator                               (`beds dlq`, `beds audit`, adm commands,
#                                                  `beds mig`, topology clean-up)
#          client                                 (calls nodes: requests and its replies)
# The password is read from PASSWORD_FILE (never from the command line or environment).
# RABBITMQCTL overrides the command (e.g. "rabbitmqctl -n rabbit@host").
set -euo pipefail

vhost=/
tag=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --vhost) vhost="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -ne 3 ]]; then
  echo "usage: $0 [--vhost V] [--tag T] PROFILE USER PASSWORD_FILE (see --help)" >&2
  exit 2
fi
profile="$1" user="$2" password_file="$3"
if [[ ! -r "$password_file" ]]; then
  echo "cannot read the password file $password_file" >&2
  exit 2
fi
if [[ "$user" == guest ]]; then
  echo "give BEDS its own users; guest is for dev and test only" >&2
  exit 2
fi
# shellcheck disable=SC2206
ctl=(${RABBITMQCTL:-rabbitmqctl} -q)

# The queue tag as a regex literal.
t=$(printf '%s' "$tag" | sed 's/[][\.*^$()+?{}|]/\\&/g')

case "$profile" in
  appServer|admin|segundo|tercero)
    # Its work queues, their retry lanes and dead-letter queues, the event queue, the
    # admin's command, audit, lineage and status queues (an appServer declares the audit
    # queue too, so no event of an audited template is published before it exists), its
    # control queue ({tag}ctl.<node>), segundo's {tag}mig.* queues (bulk import and export,
    # warehouse reads), the invalidation queues, and the two exchanges;
    # replies go out through the default exchange (`amq.default`) to `beds.reply.*` or
    # `amq.rabbitmq.reply-to`. `mig.*`: segundo's queues (an appServer declares
    # {tag}mig.read and forwards warehouse reads there).
    ours="${t}(rec|evt|ctl|mig)\\..*|${t}(adm|audit|lineage)(\\.dlq)?|${t}status|beds\\.inv\\..*"
    configure="^(beds\\.events|beds\\.dlx|${ours})\$"
    write="^(beds\\.events|beds\\.dlx|amq\\.default|${ours})\$"
    read="^(beds\\.events|beds\\.dlx|${ours})\$"
    # On the topic exchanges, this tag only: events, invalidations, dead letters, heartbeats
    # and lineage (log.*), lane commands (ctl.*), dead letters of the mig.* queues.
    topic_write="^${t}((rec|evt|inv|log|ctl|mig)\\.|(adm|audit)\$)"
    topic_read="^${t}"
    ;;
  operator)
    # `beds dlq` reads the dead-letter queues and republishes to the work queues through
    # the default exchange; topology clean-up deletes this tag's queues. `beds audit` and
    # other adm commands go to beds.events with key {tag}adm, `beds mig` to segundo with key
    # {tag}mig.bulk; replies to its own queue.
    ours="${t}(rec|evt|mig)\\..*|${t}(adm|audit)(\\.dlq)?"
    configure="^(beds\\.reply\\..*|${ours})\$"
    write="^(amq\\.default|beds\\.events|${ours})\$"
    read="^(beds\\.reply\\..*|${ours})\$"
    topic_write="^${t}(adm|mig\\.bulk)\$"
    topic_read='^$'
    ;;
  client)
    # Its own reply queue only; requests only to beds.events with this tag's request keys
    # (mig.read: warehouse reads, which the typed client sends to segundo directly).
    configure='^beds\.reply\..*$'
    write='^beds\.events$'
    read='^beds\.reply\..*$'
    topic_write="^${t}(rec\\.(read|write)|mig\\.read)\$"
    topic_read='^$'
    ;;
  *)
    echo "unknown profile $profile; use appServer, admin, segundo, tercero, operator or client" >&2
    exit 2
    ;;
esac

password=$(<"$password_file")
if "${ctl[@]}" list_users --no-table-headers | cut -f1 | grep -qxF "$user"; then
  "${ctl[@]}" change_password "$user" "$password"
else
  "${ctl[@]}" add_user "$user" "$password"
fi
"${ctl[@]}" set_permissions -p "$vhost" "$user" "$configure" "$write" "$read"
"${ctl[@]}" clear_topic_permissions -p "$vhost" "$user" >/dev/null 2>&1 || true
for exchange in beds.events beds.dlx; do
  "${ctl[@]}" set_topic_permissions -p "$vhost" "$user" "$exchange" "$topic_write" "$topic_read"
done
echo "user $user ($profile) on vhost $vhost, queue tag '${tag}': configure $configure, write $write, read $read; topic write $topic_write"
