"""containerd API messages and the Snapshots service: hand-written .proto files and the stubs
``scripts/gen-protos`` generates from them (checked in; do not edit the ``*_pb2*`` files)."""
