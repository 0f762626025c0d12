"""What several training tests share: a tiny token stream, and Ctrl-C sent in the middle of a step."""
import os
import signal

import numpy as np

from tinygrad_llm.data import TokenData


def make_data(sampler_seed=0):
    """3000 ids over a vocabulary of 13, every third one a 5 (some structure, so the loss moves)."""
    ids = np.random.default_rng(0).integers(0, 13, 3000).astype(np.uint16)
    ids[::3] = 5
    d = TokenData(ids, source_bytes=6000, seed=sampler_seed)
    d.meta["vocab_size"] = 13
    return d


def interrupt_during_step(trainer, step):
    """SIGINT to this process while the trainer runs step `step` + 1: the step finishes, then the
    run stops (the loop checks the flag only between steps)."""
    train_step = trainer.train_step

    def interrupted():
        if trainer.step == step:
            os.kill(os.getpid(), signal.SIGINT)
        return train_step()
    trainer.train_step = interrupted
