"""The CRI ImageService subset the tests use (``cri.proto``) and its generated stubs
(``scripts/gen-protos``)."""
