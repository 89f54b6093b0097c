#!/usr/bin/env bash
# One-shot topics-init: creates the topics Pulse uses before the producer may start.
# Idempotent (a second `docker compose up` finds the topics and only re-applies retention), so the
# service can run on every start; partitions are never lowered, since Kafka cannot shrink them.
# rpk reads the brokers from RPK_BROKERS.
set -euo pipefail

ensure_topic() {
  local name="$1" partitions="$2" retention_ms="$3"
  if rpk topic describe "$name" >/dev/null 2>&1; then
    rpk topic alter-config "$name" --set "retention.ms=${retention_ms}"
    echo "topic ${name}: exists, retention.ms=${retention_ms}"
  else
    rpk topic create "$name" --partitions "$partitions" --replicas "$TOPIC_REPLICAS" \
      --topic-config cleanup.policy=delete --topic-config "retention.ms=${retention_ms}"
    echo "topic ${name}: created with ${partitions} partitions, retention.ms=${retention_ms}"
  fi
}

ensure_topic "$TRADES_TOPIC" "$TRADES_PARTITIONS" "$TRADES_RETENTION_MS"
# Dead letters and gaps are rare and kept longer: they are what an operator looks at after the fact.
ensure_topic "$DEAD_LETTER_TOPIC" 1 "$AUDIT_RETENTION_MS"
ensure_topic "$GAPS_TOPIC" 1 "$AUDIT_RETENTION_MS"
rpk topic list
