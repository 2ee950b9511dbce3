#!/bin/bash
# The upstream script's command, without the upstream distribution's launcher.
exec java -Xmx256m -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
  -cp '/opt/kafka/libs/*' org.apache.kafka.tools.TopicCommand "$@"
