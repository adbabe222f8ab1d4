"""Command prefixes to start OCI runtimes (runc, crun, runsc) the way this machine needs.

crun 1.8 refuses to run on a hybrid cgroup layout whose cgroup2 hierarchy still has
controllers (on this VM: hugetlb, which is not mounted as v1). In a private mount namespace
without ``/sys/fs/cgroup/unified`` it sees plain cgroup v1, so it is started that way; the
host's mounts are unchanged.
"""

from __future__ import annotations

HIDE_UNIFIED_CGROUP = (
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    'if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi; exec "$@"',
    "sh",
)

#: ``name: (prefix, run arguments, delete arguments)``: ``[*prefix, name, *run, "--bundle",
#: DIR, ID]`` runs a bundle, ``[*prefix, name, *delete, ID]`` removes what is left of it.
RUNTIMES = {
    "runc": ((), ("run",), ("delete", "-f")),
    "crun": (HIDE_UNIFIED_CGROUP, ("run",), ("delete", "-f")),
    "runsc": ((), ("--rootless=false", "--network=none", "run"), ("delete", "-force")),
}
