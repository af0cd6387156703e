"""Protobuf message classes for the parts of TensorFlow's formats ckptkit reads without TensorFlow.

TensorFlow's generated `*_pb2` modules live inside the `tensorflow` package, and importing one imports
all of TensorFlow (about 1.5 s). The few messages ckptkit needs are declared here with TensorFlow's own
field numbers; protobuf skips every field not declared, so the real files parse unchanged.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64, "bool": _F.TYPE_BOOL, "float": _F.TYPE_FLOAT,
            "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES, "fixed32": _F.TYPE_FIXED32}

# a field: (name, number, type) or (name, number, type, "repeated"); type is a scalar above, another
# message of the same file, or "map<string,T>" (T a scalar or a message)
Field = tuple


def message_classes(package: str, messages: dict[str, list[Field]]) -> dict[str, type]:
    """{name: message class} for the messages declared in `messages` (one proto3 file, `package`)."""
    fdp = descriptor_pb2.FileDescriptorProto(name=f"{package}.proto", package=package, syntax="proto3")
    for name, fields in messages.items():
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, *label in fields:
            repeated = bool(label) or ftype.startswith("map<")
            f = m.field.add(name=fname, number=number, label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if ftype.startswith("map<"):
                key, value = ftype[4:-1].split(",")
                entry = m.nested_type.add(name=fname.title().replace("_", "") + "Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_SCALARS[key], label=_F.LABEL_OPTIONAL)
                if value in _SCALARS:
                    entry.field.add(name="value", number=2, type=_SCALARS[value], label=_F.LABEL_OPTIONAL)
                else:
                    entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                                    type_name=f".{package}.{value}")
                f.type, f.type_name = _F.TYPE_MESSAGE, f".{package}.{name}.{entry.name}"
            elif ftype in _SCALARS:
                f.type = _SCALARS[ftype]
            else:
                f.type, f.type_name = _F.TYPE_MESSAGE, f".{package}.{ftype}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
            for name in messages}
