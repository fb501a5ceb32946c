"""Step a run to its end, with a progress bar and checkpoints (node and edge fits alike)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from .checkpoint import save_checkpoint


def step_to_end(
    run,
    checkpoint: Path | None,
    identity: dict,
    progress: bool,
    desc: str,
    state: Callable[[], dict] | None = None,
) -> None:
    """Call ``run.step()`` until ``run.done``, saving ``state()`` (default
    ``run.state_dict()``) every ``checkpoint_every`` steps and at the end. ``run`` has
    ``config`` (``steps``, ``checkpoint_every``), ``step_index`` and ``progress_text(record)``."""
    state = state or run.state_dict
    config = run.config
    bar = tqdm(
        total=config.steps,
        initial=run.step_index,
        desc=desc,
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar:
        while not run.done:
            record = run.step()
            bar.update()
            if progress and (record.step % 5 == 0 or run.done):
                bar.set_postfix_str(run.progress_text(record))
            if checkpoint and (run.step_index % config.checkpoint_every == 0 or run.done):
                save_checkpoint(checkpoint, identity, state())
