"""Training: one loop + task objects (classify, multitask, segment, cssl) run by Ray Train."""

from covidct_bench.train.config import TrainConfig, load_config
from covidct_bench.train.tasks import TASKS, Task, register_task

__all__ = ["TASKS", "Task", "TrainConfig", "load_config", "register_task"]
