"""Offline RL, the `rl` task: Decision-minGRU / Decision-minLSTM on D4RL-layout data (Feng et al.
2024, sec. 4.2), scored in the MuJoCo simulators beside behaviour-cloning baselines (BC, %BC).

    data.py       D4RL-layout files: read / write, episodes, returns-to-go, normalised scores, K-windows
    minari_io.py  Minari datasets (the maintained successor of D4RL): read minari:ID, write collected data
    collect.py    datasets of D4RL's kinds made locally (gymnasium MuJoCo, ARS behaviour policies)
    ars.py        Augmented Random Search with lockstep rollouts: the behaviour policies collect.py uses
    model.py      DecisionRNN and the behaviour-cloning MLP
    eval.py       scored simulator rollouts of a trained policy
    task.py       the task module of the mincore.tasks contract (RLConfig, RLTask, train)
    table.py      `mincore rl table`: every model and baseline on every dataset, as one table

The package is the task module: it re-exports task.py's names.
"""

from .task import (
    MODELS,
    OPTIONS,
    PRESETS,
    THREADS,
    RLConfig,
    RLTask,
    Task,
    collect_config,
    config,
    describe,
    from_dict,
    train,
)

__all__ = ["RLConfig", "PRESETS", "MODELS", "THREADS", "OPTIONS", "RLTask", "Task", "config", "from_dict", "train",
           "describe", "collect_config"]
