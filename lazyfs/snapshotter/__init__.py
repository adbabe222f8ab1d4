"""lazyfs as a containerd remote snapshotter (a proxy snapshot plugin).

``lazyfs snapshotter --address SOCK --root DIR`` serves containerd's
``containerd.services.snapshots.v1.Snapshots`` gRPC API on a unix socket:

* :mod:`.metadata`: every snapshot's metadata in SQLite under the root;
* :mod:`.service`: the snapshot rules, ordinary (overlayfs) and remote (lazily served)
  snapshots, and the gRPC servicer;
* :mod:`.filters`: containerd's filter expressions for ``List``;
* :mod:`.server`: the daemon (restore on start, logs, Prometheus metrics);
* :mod:`.cli`: the ``snapshotter`` sub-command;
* :mod:`.layers`: the client of the layer server (``lazyfs layerd``), the separate process
  whose one FUSE mount at ``ROOT/layers`` serves each remote layer as an overlayfs lower dir;
* :mod:`.proto`: the hand-written ``.proto`` files and their generated stubs
  (``scripts/gen-protos``).
"""
