"""moto_server for the local stack, with one fix to moto's Batch docker mode.

moto 5.2 forwards a job container's log lines to CloudWatch Logs with float timestamps
(milliseconds with a fraction, e.g. 1795701701568.908). Real CloudWatch Logs answers integers,
and the AWS SDK for Rust refuses the float ("invalid number"), so GetLogEvents, which the
controller uses to learn what each job pushed, could not be tested. This rounds them down;
nothing else changes. Run as: python e2e/moto_server.py -H HOST -p PORT
"""

import moto.batch.models as batch_models
from moto.server import main

_unix_time_millis = batch_models.unix_time_millis


def _whole_millis(*args, **kwargs):
    return int(_unix_time_millis(*args, **kwargs))


batch_models.unix_time_millis = _whole_millis

if __name__ == "__main__":
    main()
