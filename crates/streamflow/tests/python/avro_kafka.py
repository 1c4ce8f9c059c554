"""Third-party Avro producer and consumer for the end-to-end test, with
confluent-kafka-python's own AvroSerializer / AvroDeserializer:

    avro_kafka.py produce REGISTRY BROKERS TOPIC N1 N2
        N1 bids with schema v1, then N2 with v2 (adds `channel` with a
        default), then two messages no reader can take: plain bytes, and
        the wire format with a schema id the registry does not have.
    avro_kafka.py consume REGISTRY BROKERS TOPIC
        every record of TOPIC, deserialized, one JSON object per line.
    avro_kafka.py produce-json REGISTRY BROKERS TOPIC N
        N orders with JSONSerializer (a JSON Schema), then one message that
        is plain JSON without the framing.
    avro_kafka.py produce-protobuf REGISTRY BROKERS TOPIC N
        N orders with ProtobufSerializer (int64, string, double, an enum
        and a google.protobuf.Timestamp), then one message that is not
        framed.
    avro_kafka.py consume-protobuf REGISTRY BROKERS TOPIC
        as `consume`, with ProtobufDeserializer and the message class built
        from the subject's latest schema (read `format=serialized`).
    avro_kafka.py consume-json REGISTRY BROKERS TOPIC
        as `consume`, with JSONDeserializer (validating each record).
"""

import json
import sys

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

mode, registry, brokers, topic = sys.argv[1:5]
client = SchemaRegistryClient({"url": registry})

FIELDS = [
    {"name": "auction", "type": "long"},
    {"name": "bidder", "type": "long"},
    {"name": "price", "type": "long"},
    {"name": "date_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
]


def schema(fields):
    return json.dumps({"type": "record", "name": "Bid", "namespace": "nexmark", "fields": fields})


if mode == "produce":
    n1, n2 = int(sys.argv[5]), int(sys.argv[6])
    v1 = AvroSerializer(client, schema(FIELDS))
    v2 = AvroSerializer(client, schema(FIELDS + [{"name": "channel", "type": "string", "default": "web"}]))
    ctx = SerializationContext(topic, MessageField.VALUE)
    producer = Producer({"bootstrap.servers": brokers})
    base = 1_700_000_000_000
    for i in range(n1 + n2):
        bid = {"auction": i % 10, "bidder": i, "price": 100 + i, "date_time": base + i * 10}
        if i < n1:
            value = v1(bid, ctx)
        else:
            value = v2(dict(bid, channel="app"), ctx)
        producer.produce(topic, value=value, key=str(i))
    producer.produce(topic, value=b"not avro at all")
    producer.produce(topic, value=b"\x00\x00\x00\x03\xe7" + b"\x02")
    assert producer.flush(30) == 0
    print(json.dumps({"produced": n1 + n2 + 2}))
elif mode == "produce-json":
    n = int(sys.argv[5])
    order = {"type": "object", "title": "Order",
             "properties": {"id": {"type": "integer"}, "customer": {"type": "string"},
                            "amount": {"type": "number"}},
             "required": ["id", "customer", "amount"]}
    serializer = JSONSerializer(json.dumps(order), client)
    ctx = SerializationContext(topic, MessageField.VALUE)
    producer = Producer({"bootstrap.servers": brokers})
    for i in range(n):
        producer.produce(topic, value=serializer({"id": i, "customer": f"c{i % 7}", "amount": i / 4}, ctx))
    producer.produce(topic, value=json.dumps({"id": -1, "customer": "unframed", "amount": 0}).encode())
    assert producer.flush(30) == 0
    print(json.dumps({"produced": n + 1}))
elif mode == "produce-protobuf":
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer

    n = int(sys.argv[5])
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="shop/order.proto", package="shop", syntax="proto3",
                                             dependency=["google/protobuf/timestamp.proto"])
    status = fdp.enum_type.add(name="Status")
    for number, name in enumerate(["NEW", "PAID", "SHIPPED"]):
        status.value.add(name=name, number=number)
    order = fdp.message_type.add(name="Order")
    order.field.add(name="id", number=1, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    order.field.add(name="customer", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    order.field.add(name="amount", number=3, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    order.field.add(name="status", number=4, type=F.TYPE_ENUM, type_name=".shop.Status", label=F.LABEL_OPTIONAL)
    order.field.add(name="at", number=5, type=F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp",
                    label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(timestamp_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(fdp)
    Order = message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Order"))
    Timestamp = message_factory.GetMessageClass(pool.FindMessageTypeByName("google.protobuf.Timestamp"))
    serializer = ProtobufSerializer(Order, client, {"use.deprecated.format": False})
    ctx = SerializationContext(topic, MessageField.VALUE)
    producer = Producer({"bootstrap.servers": brokers})
    for i in range(n):
        at = Timestamp(seconds=1_700_000_000 + i, nanos=(i % 1000) * 1_000_000)
        value = serializer(Order(id=i, customer=f"c{i % 7}", amount=i / 4, status=i % 3, at=at), ctx)
        producer.produce(topic, value=value)
    producer.produce(topic, value=b"plain bytes")
    assert producer.flush(30) == 0
    print(json.dumps({"produced": n + 1}))
elif mode in ("consume", "consume-json", "consume-protobuf"):
    if mode == "consume":
        deserializer = AvroDeserializer(client)
    elif mode == "consume-json":
        deserializer = JSONDeserializer(None, schema_registry_client=client)
    else:
        import base64
        from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory, timestamp_pb2
        from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer

        latest = client.get_latest_version(topic + "-value", fmt="serialized")
        fdp = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(latest.schema.schema_str))
        fdp.name = fdp.name or "row.proto"
        pool = descriptor_pool.DescriptorPool()
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(timestamp_pb2.DESCRIPTOR.serialized_pb))
        pool.Add(fdp)
        Row = message_factory.GetMessageClass(pool.FindMessageTypeByName("streamflow.Row"))
        protobuf = ProtobufDeserializer(Row, {"use.deprecated.format": False})

        def deserializer(value, ctx):
            return json_format.MessageToDict(protobuf(value, ctx), preserving_proto_field_name=True)
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "avro-check",
                         "auto.offset.reset": "earliest", "enable.partition.eof": True,
                         "isolation.level": "read_committed"})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    ended = set()
    while len(ended) < len(partitions):
        m = consumer.poll(10)
        assert m is not None, "no message within 10 s"
        if m.error():
            ended.add(m.partition())
            continue
        row = deserializer(m.value(), SerializationContext(topic, MessageField.VALUE))
        print(json.dumps(row, default=str))
    consumer.close()
