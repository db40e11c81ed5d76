"""How a job's plan is executed. An executor has two methods, called by `Job.run`:

    before_plan(job, output)               adopt what an earlier run left (e.g. finished shards)
    execute(job, plan, output, summary)    process plan.todo into `output`, committing as it goes

`InProcess` (inprocess.py) runs the staged engine in this process: CPU workers, one device,
a writer thread. `OnePerDevice` (devices.py) runs one InProcess job per local GPU, each in its
own shard of the output, and adopts the shards. A new executor (a cluster engine) is a new
module here with the same two methods; it writes through `job.open_output` and the store's
shard adoption, so the job skeleton and the formats stay untouched.
"""

from __future__ import annotations

from typing import Protocol


class Executor(Protocol):
    def before_plan(self, job, output) -> None: ...

    def execute(self, job, plan, output, summary) -> None: ...
