"""A recipe small enough for a test to train in seconds."""


def micro_recipe(**overrides):
    from ember.train.recipes import ember_debug

    settings = {
        "seq_len": 32,
        "batch_size": 2,
        "max_steps": 8,
        "warmup_steps": 2,
        "eval_interval": 4,
        "eval_tokens": 256,
        "checkpoint_interval": 4,
        "vocab_size": 320,
        "val_fraction": 0.3,
    }
    settings.update(overrides)
    return ember_debug().replace_train(**settings)
