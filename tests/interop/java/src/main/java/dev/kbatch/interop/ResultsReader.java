package dev.kbatch.interop;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.EncoderFactory;
import org.apache.avro.io.JsonEncoder;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Reads kbatch results from a topic with Avro's own single-object decoder.
 *
 * <p>Every version of kbatch.InferenceResult in the schema directory is registered with the
 * decoder; the latest is the reader schema, so older records resolve to it. Each record is
 * printed as one JSON line: {"partition", "offset", "record"}, the record in Avro's JSON
 * encoding (unions wrapped by branch name, as the Avro spec defines it).
 *
 * <p>Exit status: 0 after COUNT records; 1 on a timeout; 2 on bad arguments or schemas; 3 when
 * a value does not decode (unknown fingerprint, bad marker, corrupt body).
 */
public final class ResultsReader {
  private static final String RESULT = "kbatch.InferenceResult";
  private static final Pattern VERSIONED =
      Pattern.compile(Pattern.quote(RESULT) + "\\.v(\\d+)\\.avsc");

  private ResultsReader() {}

  public static void main(String[] args) {
    // Before the first logger exists: warnings only, on stderr.
    System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
    System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
    Map<String, String> options;
    TreeMap<Integer, Schema> versions;
    try {
      options = parse(args);
      versions = resultVersions(new File(options.get("--schemas")));
    } catch (IllegalArgumentException | IOException e) {
      System.err.println("results-reader: " + e.getMessage());
      System.exit(2);
      return;
    }
    int status =
        read(
            options.get("--bootstrap"),
            options.get("--topic"),
            versions,
            Integer.parseInt(options.get("--count")),
            Duration.ofMillis((long) (Double.parseDouble(options.get("--timeout-s")) * 1000)));
    System.out.flush();
    System.exit(status);
  }

  private static Map<String, String> parse(String[] args) {
    Map<String, String> options = new HashMap<>();
    options.put("--timeout-s", "60");
    for (int i = 0; i + 1 < args.length; i += 2) {
      options.put(args[i], args[i + 1]);
    }
    for (String required : List.of("--bootstrap", "--topic", "--schemas", "--count")) {
      if (!options.containsKey(required)) {
        throw new IllegalArgumentException(
            "usage: ResultsReader --bootstrap HOST:PORT --topic TOPIC --schemas DIR"
                + " --count N [--timeout-s S] (missing "
                + required
                + ")");
      }
    }
    return options;
  }

  /** Every kbatch.InferenceResult.v<N>.avsc in the directory, by version. */
  static TreeMap<Integer, Schema> resultVersions(File directory) throws IOException {
    File[] files = directory.listFiles();
    if (files == null) {
      throw new IOException("no schema directory " + directory);
    }
    TreeMap<Integer, Schema> versions = new TreeMap<>();
    for (File file : files) {
      Matcher match = VERSIONED.matcher(file.getName());
      if (match.matches()) {
        // A fresh parser per file: versions share type names (kbatch.Output, ...).
        versions.put(Integer.valueOf(match.group(1)), new Schema.Parser().parse(file));
      }
    }
    if (versions.isEmpty()) {
      throw new IOException("no " + RESULT + ".v<N>.avsc in " + directory);
    }
    return versions;
  }

  static BinaryMessageDecoder<GenericRecord> decoder(TreeMap<Integer, Schema> versions) {
    Schema reader = versions.lastEntry().getValue();
    BinaryMessageDecoder<GenericRecord> decoder =
        new BinaryMessageDecoder<>(GenericData.get(), reader);
    for (Map.Entry<Integer, Schema> version : versions.entrySet()) {
      decoder.addSchema(version.getValue());
      System.err.printf(
          "results-reader: %s v%d fingerprint %016x%n",
          RESULT,
          version.getKey(),
          Long.reverseBytes(SchemaNormalization.parsingFingerprint64(version.getValue())));
    }
    return decoder;
  }

  private static int read(
      String bootstrap,
      String topic,
      TreeMap<Integer, Schema> versions,
      int count,
      Duration timeout) {
    BinaryMessageDecoder<GenericRecord> decoder = decoder(versions);
    Schema reader = versions.lastEntry().getValue();
    GenericDatumWriter<GenericRecord> writer = new GenericDatumWriter<>(reader, GenericData.get());
    PrintStream out = new PrintStream(System.out, false, StandardCharsets.UTF_8);
    long deadline = System.nanoTime() + timeout.toNanos();
    int printed = 0;
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(config(bootstrap))) {
      List<TopicPartition> partitions = partitionsOf(consumer, topic, timeout);
      if (partitions.isEmpty()) {
        System.err.printf("results-reader: topic %s has no partitions%n", topic);
        return 1;
      }
      consumer.assign(partitions);
      consumer.seekToBeginning(partitions);
      while (printed < count) {
        long left = deadline - System.nanoTime();
        if (left <= 0) {
          System.err.printf(
              "results-reader: timed out after %d s with %d of %d records from %s%n",
              timeout.toSeconds(), printed, count, topic);
          return 1;
        }
        for (ConsumerRecord<byte[], byte[]> record :
            consumer.poll(Duration.ofNanos(Math.min(left, 500_000_000L)))) {
          GenericRecord result = decode(decoder, record);
          if (result == null) {
            return 3;
          }
          out.printf(
              "{\"partition\":%d,\"offset\":%d,\"record\":%s}%n",
              record.partition(), record.offset(), json(writer, reader, result));
          if (++printed == count) {
            break;
          }
        }
      }
    } catch (IOException e) {
      System.err.println("results-reader: cannot write JSON: " + e);
      return 3;
    } finally {
      out.flush();
    }
    return 0;
  }

  /** The record's value decoded, or null (with the reason on stderr) when it does not. */
  private static GenericRecord decode(
      BinaryMessageDecoder<GenericRecord> decoder, ConsumerRecord<byte[], byte[]> record) {
    String where =
        String.format(
            "%s partition %d offset %d", record.topic(), record.partition(), record.offset());
    if (record.value() == null) {
      System.err.printf("results-reader: %s is a tombstone%n", where);
      return null;
    }
    try {
      return decoder.decode(record.value());
    } catch (IOException | RuntimeException e) {
      // MissingSchemaException (unknown fingerprint) and BadHeaderException (no C3 01) are
      // AvroRuntimeExceptions; a truncated body is an EOFException; a corrupt one can be
      // any runtime exception of the datum reader (a bad union or enum index, say).
      System.err.printf("results-reader: %s does not decode: %s%n", where, e);
      return null;
    }
  }

  private static Properties config(String bootstrap) {
    Properties config = new Properties();
    config.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    config.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
    config.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    config.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    config.put(ConsumerConfig.CLIENT_ID_CONFIG, "kbatch-java-results-reader");
    config.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    config.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    return config;
  }

  private static List<TopicPartition> partitionsOf(
      KafkaConsumer<byte[], byte[]> consumer, String topic, Duration timeout) {
    List<TopicPartition> partitions = new ArrayList<>();
    for (PartitionInfo info : consumer.partitionsFor(topic, timeout)) {
      partitions.add(new TopicPartition(topic, info.partition()));
    }
    return partitions;
  }

  private static String json(
      GenericDatumWriter<GenericRecord> writer, Schema schema, GenericRecord record)
      throws IOException {
    ByteArrayOutputStream buffer = new ByteArrayOutputStream();
    JsonEncoder encoder = EncoderFactory.get().jsonEncoder(schema, buffer);
    writer.write(record, encoder);
    encoder.flush();
    return buffer.toString(StandardCharsets.UTF_8);
  }
}
