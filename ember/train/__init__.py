"""Training of Ember's own tiny model family: corpus, tokenizer, trainer, recipes, export.

The single-device trainer here is the base case of the Galvatron runtime: model
construction (``model_init``), data (``data``), optimizer and schedule (``optim``), the step
(``trainer``), the loop (``loop``) and checkpoints (``checkpoint``) are separate seams.
"""
