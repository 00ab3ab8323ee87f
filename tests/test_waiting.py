"""The test helpers that wait on events (tests/waiting.py) report what they saw."""

from __future__ import annotations

import sys

import pytest
import waiting


def test_a_process_that_exits_before_the_event_fails_with_its_output() -> None:
    code = "print('error: the reason it stopped', flush=True); raise SystemExit(1)"
    with waiting.running([sys.executable, "-c", code], merge_output=True) as process:
        output = waiting.Output(process)
        with pytest.raises(waiting.Exited, match=r"(?s)exited \(1\) before it happened.*the reason it stopped"):
            waiting.wait_for(lambda: None, process, "an event that never comes", output)

