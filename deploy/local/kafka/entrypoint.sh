#!/bin/bash
# Starts one KRaft node configured the way the apache/kafka image configures one: each
# KAFKA_FOO_BAR variable becomes foo.bar in server.properties (KAFKA___ -> -, __ -> _).
set -euo pipefail

config=/opt/kafka/config/server.properties
: "${CLUSTER_ID:=5L6g3nShT-eMCtK--X86sw}"
: "${KAFKA_LOG_DIRS:=/var/lib/kafka/data}"
export KAFKA_LOG_DIRS

# JVM options share the prefix but are not broker properties.
jvm_options=" HEAP_OPTS OPTS LOG4J_OPTS JVM_PERFORMANCE_OPTS "
: >"$config"
while IFS='=' read -r name value; do
  key=${name#KAFKA_}
  [[ $jvm_options == *" $key "* ]] && continue
  property=$(sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g' <<<"$key" | tr 'A-Z' 'a-z')
  echo "$property=$value" >>"$config"
done < <(env | grep '^KAFKA_')

java_command=(java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g} -XX:+UseG1GC ${KAFKA_OPTS:-}
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -cp '/opt/kafka/libs/*')
"${java_command[@]}" kafka.tools.StorageTool format --ignore-formatted \
  --cluster-id="$CLUSTER_ID" --config="$config"
exec "${java_command[@]}" kafka.Kafka "$config"
