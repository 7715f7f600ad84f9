"""search.interrupts: an interrupt inside a trial waits for a storage call to return (raising
inside SQLAlchemy could leave SQLite's write lock held), and is raised once it has."""
from __future__ import annotations

import signal
import sys
import time

import pytest

from search.interrupts import Interrupts, _in_storage_call


def frame_inside(module_name: str):
    """A frame whose code belongs to `module_name` (as if interrupted there)."""
    namespace = {"__name__": module_name, "sys": sys}
    exec("def here():\n    return sys._getframe()", namespace)
    return namespace["here"]()


def test_storage_frames_are_recognised():
    assert _in_storage_call(frame_inside("sqlalchemy.engine.base"))
    assert _in_storage_call(frame_inside("optuna.storages._rdb.storage"))
    assert not _in_storage_call(frame_inside("search.train.trainer"))


def test_an_interrupt_in_a_storage_call_is_raised_when_the_call_has_returned():
    interrupts = Interrupts()
    with interrupts.installed(), pytest.raises(KeyboardInterrupt), interrupts.raising():
        interrupts._handle(signal.SIGINT, frame_inside("sqlalchemy.orm.session"))  # deferred
        assert interrupts.requested
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # the trainer's own code: raised here, soon
            sum(range(1000))
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_an_interrupt_while_training_is_raised_at_once():
    interrupts = Interrupts()
    with interrupts.installed(), pytest.raises(KeyboardInterrupt), interrupts.raising():
        interrupts._handle(signal.SIGTERM, frame_inside("search.train.trainer"))


def test_outside_a_raising_region_an_interrupt_is_only_noted_and_a_second_is_ignored():
    interrupts = Interrupts()
    with interrupts.installed():
        interrupts._handle(signal.SIGINT, frame_inside("search.run"))
        interrupts._handle(signal.SIGTERM, frame_inside("search.run"))
        assert interrupts.requested
        started = time.monotonic()
        interrupts.sleep(30)  # returns at once: an interrupt is pending
        assert time.monotonic() - started < 1
        with pytest.raises(KeyboardInterrupt):  # a region entered afterwards raises at once
            with interrupts.raising():
                pass
