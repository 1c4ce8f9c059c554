"""Drives StreamFlow's schema registry with confluent-kafka-python's own
SchemaRegistryClient and Avro serde, unchanged. Usage:

    registry_client.py URL            the whole client surface
    registry_client.py URL TOKEN      with Basic auth (any user, the token)

Every check is an assert; the last line printed is a JSON summary.
"""

import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

url = sys.argv[1]
token = sys.argv[2] if len(sys.argv) > 2 else None


def client():
    """A fresh client (no cache shared with earlier calls)."""
    conf = {"url": url}
    if token:
        conf["basic.auth.user.info"] = "streamflow:" + token
    return SchemaRegistryClient(conf)


def avro(*fields):
    return Schema(
        json.dumps({"type": "record", "name": "Bid", "namespace": "nexmark", "fields": list(fields)}),
        "AVRO",
    )


def error_code(call):
    try:
        call()
    except SchemaRegistryError as e:
        return e.error_code
    raise AssertionError("expected a SchemaRegistryError")


AUCTION = {"name": "auction", "type": "long"}
PRICE = {"name": "price", "type": "long"}
CHANNEL = {"name": "channel", "type": "string", "default": ""}
BIDDER = {"name": "bidder", "type": "long"}

if token:
    id1 = client().register_schema("auth-value", avro(AUCTION))
    assert client().get_schema(id1).schema_type == "AVRO"
    print(json.dumps({"auth": "ok", "id": id1}))
    sys.exit(0)

subject = "bids-value"
v1, v2, bad = avro(AUCTION, PRICE), avro(AUCTION, PRICE, CHANNEL), avro(AUCTION, PRICE, BIDDER)

# Register: ids are stable, an identical schema is not versioned twice.
id1 = client().register_schema(subject, v1)
assert client().register_schema(subject, v1) == id1
id2 = client().register_schema(subject, v2)
assert id2 != id1
got = client().get_schema(id1)
assert json.loads(got.schema_str) == json.loads(v1.schema_str), got.schema_str
assert got.schema_type == "AVRO"
assert client().get_versions(subject) == [1, 2]
latest = client().get_latest_version(subject)
assert (latest.version, latest.schema_id) == (2, id2), latest
assert client().get_version(subject, 1).schema_id == id1
assert client().lookup_schema(subject, v1).version == 1
assert [(v.subject, v.version) for v in client().get_schema_versions(id2)] == [(subject, 2)]
assert subject in client().get_subjects()

# Compatibility: BACKWARD by default; a field without a default is refused.
assert client().get_compatibility() == "BACKWARD"
assert client().test_compatibility(subject, v2) is True
assert client().test_compatibility(subject, bad) is False
assert client().test_compatibility_all_versions(subject, bad) is False
assert error_code(lambda: client().register_schema(subject, bad)) == 409

# Per-subject config.
assert error_code(lambda: client().get_compatibility(subject)) == 40408
assert client().set_compatibility(subject, "NONE") == {"compatibility": "NONE"}
assert client().get_compatibility(subject) == "NONE"
id3 = client().register_schema(subject, bad)
assert client().get_versions(subject) == [1, 2, 3]
client().set_compatibility(subject, "FULL_TRANSITIVE")
assert client().get_config(subject).compatibility_level.value == "FULL_TRANSITIVE"
client().delete_config(subject)
assert error_code(lambda: client().get_compatibility(subject)) == 40408
assert error_code(lambda: client().set_compatibility(subject, "SIDEWAYS")) == 42203

# Soft, then hard deletes.
assert client().delete_version(subject, 3) == 3
assert client().get_versions(subject) == [1, 2]
assert error_code(lambda: client().delete_version(subject, 3)) == 40406
assert error_code(lambda: client().delete_version(subject, 2, permanent=True)) == 40407
assert client().delete_version(subject, 3, permanent=True) == 3
assert client().delete_subject(subject) == [1, 2]
assert error_code(lambda: client().get_versions(subject)) == 40401
assert subject not in client().get_subjects()
assert error_code(lambda: client().delete_subject(subject)) == 40404
# A soft-deleted version's schema still resolves by id (old data stays readable).
assert client().get_schema(id1).schema_type == "AVRO"
assert client().delete_subject(subject, permanent=True) == [1, 2]
assert error_code(lambda: client().get_schema(id1)) == 40403

# JSON Schema and Protobuf, and the types list.
json_id = client().register_schema(
    "orders-value",
    Schema(json.dumps({"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}), "JSON"),
)
assert client().get_schema(json_id).schema_type == "JSON"
proto_id = client().register_schema(
    "people-value", Schema('syntax = "proto3";\npackage nexmark;\nmessage Person { int64 id = 1; string name = 2; }\n', "PROTOBUF")
)
assert client().get_schema(proto_id).schema_type == "PROTOBUF"
assert sorted(client().get_schema_types()) == ["AVRO", "JSON", "PROTOBUF"]

# The Avro serde: the Confluent wire format round-trips through this registry.
serializer = AvroSerializer(client(), json.dumps(
    {"type": "record", "name": "Bid", "namespace": "nexmark", "fields": [AUCTION, PRICE]}))
ctx = SerializationContext("bids", MessageField.VALUE)
payload = serializer({"auction": 7, "price": 1200}, ctx)
assert payload[0] == 0, payload[:5]
wire_id = int.from_bytes(payload[1:5], "big")
assert AvroDeserializer(client())(payload, ctx) == {"auction": 7, "price": 1200}

# The Protobuf serde: it registers the message's file as a base64
# FileDescriptorProto and reads writer schemas back `format=serialized`.
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer  # noqa: E402

fdp = descriptor_pb2.FileDescriptorProto(name="shop/order.proto", package="shop", syntax="proto3")
order = fdp.message_type.add(name="Order")
F = descriptor_pb2.FieldDescriptorProto
order.field.add(name="id", number=1, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
order.field.add(name="customer", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
pool = descriptor_pool.DescriptorPool()
pool.Add(fdp)
Order = message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Order"))
orders_ctx = SerializationContext("orders-pb", MessageField.VALUE)
pb = ProtobufSerializer(Order, client(), {"use.deprecated.format": False})(Order(id=7, customer="c7"), orders_ctx)
assert pb[0] == 0
pb_id = int.from_bytes(pb[1:5], "big")
assert client().get_schema(pb_id).schema_type == "PROTOBUF"
back = ProtobufDeserializer(Order, {"use.deprecated.format": False}, client())(pb, orders_ctx)
assert (back.id, back.customer) == (7, "c7"), back
# The registered descriptor compiles to the same message: an evolved one
# with a new field is compatible, a retyped one is not.
order.field.add(name="amount", number=3, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
import base64  # noqa: E402
evolved = Schema(base64.standard_b64encode(fdp.SerializeToString()).decode(), "PROTOBUF")
assert client().test_compatibility("orders-pb-value", evolved) is True
order.field[0].type = F.TYPE_STRING
retyped = Schema(base64.standard_b64encode(fdp.SerializeToString()).decode(), "PROTOBUF")
assert client().test_compatibility("orders-pb-value", retyped) is False

print(json.dumps({"ids": [id1, id2, id3], "json": json_id, "protobuf": proto_id, "wire_id": wire_id, "protobuf_wire_id": pb_id}))
