# A callback for benches/fleet.rs: the wall time of every task, summed by
# task name (a task in deploy-batch.yml runs once per batch), written as JSON
# to $FLEET_TIMINGS when the run ends.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: timings
type: aggregate
short_description: Write the wall time of each task to $FLEET_TIMINGS
description: Used by benches/fleet.rs to see where a fleet deploy spends its time.
requirements: [enable in configuration]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "timings"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self.totals = {}
        self.current = None

    def _close(self):
        if self.current is not None:
            name, started = self.current
            self.totals[name] = self.totals.get(name, 0.0) + time.monotonic() - started
            self.current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self.current = (task.get_name(), time.monotonic())

    def v2_playbook_on_stats(self, stats):
        self._close()
        path = os.environ.get("FLEET_TIMINGS")
        if path:
            with open(path, "w") as f:
                json.dump(self.totals, f)
