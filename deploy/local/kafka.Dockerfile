# Local stand-in for apache/kafka, for hosts that reach no image registry
# (`make test-deploy`): Debian's JRE and the Maven Central jars of deploy/local/kafka/pom.xml
# (kbatch's local broker plus kafka-tools), configured from KAFKA_* variables like upstream.
# Build context: a folder holding libs/ (the copied jars) and this folder's kafka/ files.
FROM kbatch-local/debian:bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 1000 --home-dir /opt/kafka appuser \
 && mkdir -p /opt/kafka/bin /opt/kafka/config /var/lib/kafka/data \
 && chown appuser /opt/kafka/config /var/lib/kafka/data
COPY libs/ /opt/kafka/libs/
COPY kafka/log4j2.properties /opt/kafka/config/
COPY kafka/kafka-topics.sh kafka/entrypoint.sh /opt/kafka/bin/
USER appuser
EXPOSE 9092 9093
ENTRYPOINT ["/opt/kafka/bin/entrypoint.sh"]
