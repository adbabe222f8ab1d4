"""Registry faults seen through a real FUSE mount: right bytes or EIO in bounded time.

Every fault of :data:`tests.harness.outcomes.FAULTS` hits the blob requests of one layer of
a mounted image (through :class:`~tests.harness.faultproxy.FaultProxy` in front of the real
registry) while files are read through the mount. A fault that goes away within the retries
must give the right bytes; one that stays must give ``EIO`` within the mount's read timeout
(``tests.harness.outcomes.BOUNDS``) per read(2): the kernel asks again at once for a page
whose read-ahead failed, and the FUSE adapter answers that second request from memory.
Meanwhile files of the other layer keep
reading right and fast, no byte is ever wrong, no read hangs, and once the fault is gone the
failed file reads right from the same daemon. Also: tokens that expire between reads.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.harness.faultproxy import FaultProxy
from tests.harness.outcomes import BOUNDS, FAULTS, make_fault_image, run_fault, run_token_expiry

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.fail("these tests need /dev/fuse and fusermount3; run scripts/test", pytrace=False)

TRIES = 2


@pytest.fixture(scope="module")
def fault_image(registry):
    return make_fault_image(registry.host, victims=len(FAULTS) * TRIES + 4, bystanders=64)


@pytest.mark.parametrize("scenario", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_through_the_mount(scenario, registry, fault_image, tmp_path):
    with FaultProxy(registry.url) as proxy:
        outcome = run_fault(scenario, proxy, fault_image, tmp_path, TRIES)
    assert outcome.wrong_bytes == 0 and outcome.hangs == 0, outcome
    assert outcome.ok, outcome
    # One read(2) may cost two FUSE reads in a row: the kernel's read-ahead request fails,
    # then the kernel retries the page it needs on its own. Each is bounded by read_timeout.
    assert outcome.worst <= BOUNDS.read_timeout + 2, outcome


def test_token_expiring_mid_session(token_registry, tmp_path):
    outcome = run_token_expiry(token_registry, tmp_path, tries=2)
    assert outcome.ok, outcome
