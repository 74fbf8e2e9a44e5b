"""Functions the tests run in fresh processes (`minillm.distributed.spawn` finds them by module and name)."""
from pathlib import Path

from minillm.checkpoint import Checkpoint
from minillm.config import LlamaConfig, TrainConfig
from minillm.distributed import destroy_distributed, init_distributed
from minillm.metrics import MetricsLog
from minillm.train import build_model, train_run


def train_worker(preset: str = "debug", overrides: dict | None = None, resume: bool = False,
                 stop_at: int | None = None, checkpoint_weights: bool = False) -> dict | None:
    """`minillm train`'s job in this process, as one of the processes `spawn` started (or alone): the preset's recipe
    with `overrides` (TrainConfig fields), optionally resumed or stopped after `stop_at`. Rank 0 returns the losses it
    logged by step and, with `checkpoint_weights`, the full weights of the last checkpoint as loaded into a freshly
    built model laid out like this run's; other ranks return None."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    cfg, tcfg = LlamaConfig.from_name(preset), TrainConfig.from_preset(preset, **(overrides or {}))
    env = init_distributed(None if tcfg.device == "auto" else tcfg.device)
    try:
        res = train_run(cfg, tcfg, resume=resume, progress=False, verbose=False, stop_at=stop_at)
        weights = None
        if checkpoint_weights:
            model = build_model(cfg, tcfg, env.device)
            Checkpoint(tcfg.out_dir).load_model(model, env.device)
            sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
            weights = {k: v.detach().cpu().clone() for k, v in sd.items()}
    except BaseException:
        destroy_distributed(env, wait=False)
        raise
    destroy_distributed(env)
    if not env.is_main:
        return None
    rows = MetricsLog.read(Path(tcfg.out_dir) / "metrics.csv")
    return dict(world_size=env.world_size, step=res.step, stopped_by=res.stopped_by, weights=weights,
                losses={int(r["step"]): float(r["loss"]) for r in rows if r["loss"]},
                val_losses={int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]})
