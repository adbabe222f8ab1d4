"""Errors from trio nurseries reach callers as lazyfs's own errors."""

from __future__ import annotations

import pytest
import trio

from lazyfs.errors import LayerIndexError, NotFound, unwrap_task_errors


async def _fail(exc: BaseException) -> None:
    raise exc


def run_tasks(*errors: BaseException) -> None:
    async def main():
        with unwrap_task_errors():
            async with trio.open_nursery() as nursery:
                for exc in errors:
                    nursery.start_soon(_fail, exc)

    trio.run(main)


def test_one_error_comes_out_as_itself():
    with pytest.raises(NotFound, match="gone"):
        run_tasks(NotFound("gone"))


def test_a_lazyfs_error_is_preferred_to_others():
    with pytest.raises(LayerIndexError):
        run_tasks(ValueError("x"), LayerIndexError("bad layer"))


def test_other_errors_come_out_as_the_first():
    with pytest.raises(ValueError):
        run_tasks(ValueError("x"))


def test_keyboard_interrupt_is_not_swallowed():
    with pytest.raises((KeyboardInterrupt, BaseExceptionGroup)):
        run_tasks(KeyboardInterrupt())
